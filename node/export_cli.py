"""The command line of ``ainode export`` (the work is in :mod:`node.export`)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import NodeConfig
from storage.export_filter import OUTCOMES, StudyFilter

__all__ = ["add_export_parser", "cmd_export"]

_DATE = re.compile(r"\d{8}")


def _date(value: str) -> str:
    if not _DATE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"a date as YYYYMMDD (got {value!r})")
    return value


def add_export_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write a de-identified training set (PS3.15 Annex E) from the node's archive",
    )
    p.add_argument("--out", type=Path, required=True, help="a new folder for the export")
    p.add_argument("--study", action="append", default=[], help="a Study Instance UID (repeat)")
    p.add_argument("--from", dest="date_from", type=_date, help="Study Date from")
    p.add_argument("--to", dest="date_to", type=_date, help="Study Date up to")
    p.add_argument("--modality", default="", help="studies with a series of this modality")
    p.add_argument("--pipeline", default="", help="studies this pipeline ran on")
    p.add_argument("--outcome", choices=OUTCOMES, default="", help="with this job outcome")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels", type=Path, help="CSV: label and the original series_uid or study_uid"
    )
    labels.add_argument(
        "--silver-labels", metavar="MODEL", default="", help="label = this model's top finding"
    )
    p.add_argument(
        "--mapping", type=Path, help="also write original -> new identifiers here (outside --out)"
    )


def cmd_export(cfg: NodeConfig, args: argparse.Namespace, open_index: Callable[[], Any]) -> int:
    """Check what can be checked first (secret, folders, labels), then open the index."""
    from node.audit import Auditor, StudyTransfer
    from node.export import ExportError, ExportRequest, export_training_set, preflight

    request = ExportRequest(
        out=args.out,
        select=StudyFilter(
            study_instance_uids=tuple(args.study),
            date_from=args.date_from or "",
            date_to=args.date_to or "",
            modality=args.modality,
            pipeline=args.pipeline,
            outcome=args.outcome,
        ),
        labels_csv=args.labels,
        silver_model=args.silver_labels,
        mapping=args.mapping,
    )
    try:
        checked = preflight(cfg.export, request)
        summary = export_training_set(open_index(), cfg.export, request, checked)
    except ExportError as exc:
        print(f"ainode export: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder it may not write: the export is incomplete
        print(
            f"ainode export: stopped, {args.out} is incomplete (no export.json): "
            f"{exc.filename or ''}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    if cfg.audit is not None:
        Auditor(cfg.audit, cfg.node.ae_title).exported(
            user=getpass.getuser(),
            destination=str(args.out.resolve()),
            studies={
                uid: StudyTransfer(patient_id=summary.patient_ids.get(uid, ""), sop_classes=classes)
                for uid, classes in summary.studies.items()
            },
        )
    print(
        f"{args.out}: {len(summary.studies)} studies of {len(summary.patients)} patients, "
        f"{summary.instances} instances and {summary.results} result objects; "
        f"{summary.labelled} series labelled, {summary.unlabelled} without a label"
    )
    for what, why in summary.excluded:
        print(f"  left out {what}: {why}")
    for problem in summary.label_problems:
        print(f"  label not used: {problem}")
    return 0
