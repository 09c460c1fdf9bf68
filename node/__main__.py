"""The ``ainode`` command: serve, check-config, status, jobs, deliveries, analyze, export, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from core.config import NodeConfig, Receiver
from core.config_file import ConfigError, default_config_path, load_config
from core.logs import configure_logging
from node.export_cli import add_export_parser, cmd_export

__all__ = ["main"]

logger = logging.getLogger("ainode")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: $AINODE_CONFIG, else ./config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="ainode", description="A DICOM-native AI node beside your PACS."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the DICOM listener and scheduler")
    sub.add_parser("check-config", parents=[common], help="validate the config file and exit")
    sub.add_parser("status", parents=[common], help="studies, completion and jobs at a glance")
    worker = sub.add_parser(
        "worker", parents=[common], help="run one inference worker in the foreground"
    )
    worker.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: [inference] device)")
    worker.add_argument(
        "--pipelines",
        help="comma-separated pipeline names this worker runs (default: all with models)",
    )
    db = sub.add_parser("db", parents=[common], help="the database schema: current, upgrade")
    db.add_argument("action", choices=["current", "upgrade"])
    sub.add_parser("train", help="generate data, train, evaluate, export (see: ainode train -h)")
    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, or replay one")
    jobs.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    jobs.add_argument("job_id", nargs="?", type=int, help="the job to retry")
    jobs.add_argument("--status", choices=["todo", "doing", "succeeded", "dead"])
    jobs.add_argument("--limit", type=int, default=50)
    deliveries = sub.add_parser(
        "deliveries", parents=[common], help="list result deliveries, or replay one"
    )
    deliveries.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    deliveries.add_argument("delivery_id", nargs="?", type=int, help="the delivery to retry")
    deliveries.add_argument(
        "--status", choices=["pending", "delivered", "sent", "confirmed", "dead"]
    )
    deliveries.add_argument("--limit", type=int, default=50)
    purge = sub.add_parser(
        "purge",
        parents=[common],
        help="delete a study now (a wrong patient, an objection): files, jobs, deliveries; audited",
    )
    purge.add_argument("--study", required=True, help="the Study Instance UID")
    purge.add_argument("--reason", required=True, help="why (goes into the index and the audit)")
    analyze = sub.add_parser(
        "analyze",
        parents=[common],
        help="run the pipelines on DICOM files or folders, write results to --out (no network)",
    )
    analyze.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    analyze.add_argument("--out", type=Path, required=True, help="folder for SR, SEG, maps")
    analyze.add_argument("--pipeline", action="append", help="only this pipeline (repeatable)")
    add_export_parser(sub, common)
    demo = sub.add_parser(
        "demo",
        help="start a node and worker, send synthetic studies, show the results",
    )
    demo.add_argument(
        "--send-to", metavar="AE@HOST:PORT", help="deliver the results to this PACS as well"
    )
    demo.add_argument("--work", type=Path, help="folder for the demo's node (default: temp)")
    demo.add_argument("--port", type=int, default=0, help="the demo node's port (default: free)")
    return parser


def _cmd_serve(cfg: NodeConfig) -> int:
    import faulthandler
    import os
    import signal

    from core.metrics import MULTIPROC_ENV

    # Before anything imports prometheus_client: every process of this node
    # (children inherit the variable) writes its counters there (core.metrics).
    os.environ[MULTIPROC_ENV] = str(cfg.storage.data_dir / "metrics")
    from node.service import ServeError, serve

    configure_logging(cfg.logging)
    # ``kill -USR1 PID`` writes every thread's stack to stderr: where a node that does not
    # stop (or answer) is waiting, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return serve(cfg)
    except ServeError as exc:
        logger.error("%s", exc)
        return 1


def _cmd_check_config(cfg: NodeConfig) -> int:
    """The config file, its TLS material, the dcmtk receive path if chosen, and every model
    package in full.

    Packages: hash, load, a trial run on the CPU.
    """
    from node.tls import TlsError, client_context, server_context

    lines = []
    try:
        if cfg.node.tls is not None:
            server_context(cfg.node.tls)
            lines.append("  [node.tls]: certificate and key load (TLS 1.2+, BCP 195 suites)")
        for d in cfg.destinations:
            if d.tls is not None:
                client_context(d.tls, d.name)
                lines.append(f"  [[destinations]] {d.name!r}: TLS settings load")
    except TlsError as exc:
        print(f"ainode: configuration error: {cfg.path}: {exc}", file=sys.stderr)
        return 2
    if cfg.node.receiver is Receiver.DCMTK:
        from node.native_listener import NativeUnavailable, native_module, tls_context

        try:
            native_module()
            tls_context(cfg.node.tls)
        except (NativeUnavailable, TlsError) as exc:
            print(f"ainode: configuration error: {cfg.path}: {exc}", file=sys.stderr)
            return 2
        lines.append('  [node] receiver = "dcmtk": node/native/_dcmnet loads')
        if cfg.node.tls is not None:
            lines.append("  [node.tls]: dcmtls takes the certificate, key and CA bundle")
    folders = {folder: p.name for p in reversed(cfg.pipelines) for folder in p.models}
    if folders:
        from inference.errors import ModelPackageError
        from inference.trial import check_package

        for folder, pipeline in sorted(folders.items()):
            try:
                model, seconds = check_package(folder)
            except ModelPackageError as exc:
                print(f"ainode: [[pipelines]] {pipeline!r}: {exc}", file=sys.stderr)
                return 2
            spec = model.spec
            lines.append(
                f"  {folder}: {spec.name} {spec.version} ({spec.task}, "
                f"{len(spec.labels)} label(s)), SHA-256 verified, "
                f"trial run {seconds:.2f} s"
            )
    print(f"{cfg.path}: OK ({len(cfg.peers)} peer(s), {len(cfg.pipelines)} pipeline(s))")
    for line in lines:
        print(line)
    return 0


def _cmd_status(cfg: NodeConfig) -> int:
    from node.report import status_report
    from storage.db import describe, ensure_schema, make_sessionmaker, node_engine

    engine = node_engine(cfg)
    if engine.dialect.name == "sqlite" and not Path(str(engine.url.database)).exists():
        print(f"no database yet ({describe(engine)}): the node has not run")
        return 0
    ensure_schema(engine)
    print(f"database:              {describe(engine)}")
    # Workers touch the roster every 5 s (more often while a job runs), serve as often.
    stale = 3 * max(5.0, cfg.inference.heartbeat_s)
    print(status_report(make_sessionmaker(engine), stale_after_s=stale))
    engine.dispose()
    return 0


def _open(cfg: NodeConfig) -> Any:
    from storage.db import ensure_schema, make_sessionmaker, node_engine

    engine = node_engine(cfg)
    ensure_schema(engine)
    return make_sessionmaker(engine)


def _cmd_db(cfg: NodeConfig, action: str) -> int:
    """``ainode db current`` / ``ainode db upgrade``: the schema's revision, or bring it up."""
    from storage.db import describe, migrate, node_engine, schema_revisions

    engine = node_engine(cfg)
    current, head, _empty = schema_revisions(engine)
    if action == "upgrade" and current != head:
        migrate(engine)
        print(f"{describe(engine)}: schema upgraded from {current or 'nothing'} to {head}")
    elif action == "upgrade":
        print(f"{describe(engine)}: schema at {head}, nothing to do")
    else:
        state = "current" if current == head else f"this ainode's is {head}"
        print(f"{describe(engine)}: schema at {current or 'none (empty database)'} ({state})")
    engine.dispose()
    return 0


def _worker_config(cfg: NodeConfig, device: str | None, pipelines: str | None) -> NodeConfig:
    """The config as this worker sees it: its own device, only the pipelines it runs."""
    from dataclasses import replace

    from core.config_file import check_device

    if device is not None:
        try:
            check_device(device)
        except ValueError:
            raise ConfigError(
                f'--device: must be "auto", "cpu", "cuda" or "cuda:N" (got {device!r})'
            ) from None
        cfg = replace(cfg, inference=replace(cfg.inference, device=device))
    if pipelines is not None:
        names = [n.strip() for n in pipelines.split(",") if n.strip()]
        unknown = [n for n in names if n not in {p.name for p in cfg.pipelines}]
        if unknown or not names:
            raise ConfigError(
                f"--pipelines: {', '.join(unknown) or 'none given'} not in [[pipelines]] "
                f"({', '.join(p.name for p in cfg.pipelines)})"
            )
        cfg = replace(cfg, pipelines=tuple(p for p in cfg.pipelines if p.name in names))
    return cfg


def _cmd_worker(cfg: NodeConfig) -> int:
    import signal

    from core.process import Ending
    from inference.__main__ import run_worker, stop_on_sigterm

    configure_logging(cfg.logging)
    ending = Ending()
    stop_on_sigterm(cfg, ending)
    signal.signal(signal.SIGINT, lambda *_: ending.request("Ctrl-C", cfg.node.shutdown_grace_s))
    return run_worker(cfg, ending)


def _cmd_jobs(cfg: NodeConfig, args: argparse.Namespace) -> int:
    from core.clock import utc_now
    from storage import queue

    sessions = _open(cfg)
    if args.action == "retry":
        if args.job_id is None:
            print("ainode jobs retry: give the job id", file=sys.stderr)
            return 2
        try:
            with sessions.begin() as s:
                job = queue.replay(s, job_id=args.job_id, now=utc_now())
        except (LookupError, ValueError) as exc:
            print(f"ainode jobs retry: {exc}", file=sys.stderr)
            return 1
        print(f"job {job.id} ({job.pipeline}, study {job.study_instance_uid}) queued again")
        _audit_admin(
            cfg, "replay job", f"job {job.id} ({job.pipeline}) of study {job.study_instance_uid}"
        )
        return 0
    from storage.outcomes import declined_outcomes

    with sessions.begin() as s:
        jobs = queue.list_jobs(s, status=args.status, limit=args.limit)
        _n, declined = declined_outcomes(s, job_ids=[j.id for j in jobs], limit=10 * len(jobs))
    print(f"{'id':>6}  {'status':9} {'pipeline':16} {'tries':5} {'updated':19}  study / last error")
    for j in jobs:
        print(
            f"{j.id:>6}  {j.status:9} {j.pipeline[:16]:16} {j.attempts}/{j.max_attempts:<3} "
            f"{j.updated_at:%Y-%m-%d %H:%M:%S}  {j.study_instance_uid}"
        )
        if j.last_error:
            print(f"{'':>6}  {j.last_error}")
        for o in reversed(declined):
            if o.job_id == j.id:
                print(f"{'':>6}  not analysed: {o.result['declined']}")
    return 0


def _audit_admin(cfg: NodeConfig, action: str, detail: str) -> None:
    """An admin action in the audit trail (Security Alert: Use of Restricted Function)."""
    import getpass

    from node.audit import Auditor

    if cfg.audit is not None:
        Auditor(cfg.audit, cfg.node.ae_title).restricted(
            user=getpass.getuser(), action=action, detail=detail
        )


def _cmd_deliveries(cfg: NodeConfig, args: argparse.Namespace) -> int:
    from core.clock import utc_now
    from storage import deliveries

    sessions = _open(cfg)
    if args.action == "retry":
        if args.delivery_id is None:
            print("ainode deliveries retry: give the delivery id", file=sys.stderr)
            return 2
        with sessions.begin() as s:
            done = deliveries.replay_delivery(s, delivery_id=args.delivery_id, now=utc_now())
        if not done:
            print(
                f"ainode deliveries retry: no undelivered delivery {args.delivery_id}",
                file=sys.stderr,
            )
            return 1
        print(f"delivery {args.delivery_id} queued again; serve sends it within seconds")
        _audit_admin(cfg, "replay delivery", f"delivery {args.delivery_id}")
        return 0
    with sessions.begin() as s:
        rows = deliveries.list_deliveries(s, status=args.status, limit=args.limit)
    print(f"{'id':>6}  {'status':9} {'kind':4} {'destination':16} {'tries':6} sop instance / error")
    for d in rows:
        print(
            f"{d.id:>6}  {d.status:9} {d.result.kind:4} {d.destination[:16]:16} "
            f"{d.attempts}/{d.max_attempts:<4} {d.result.sop_instance_uid}"
        )
        if d.last_error and d.status not in ("delivered", "confirmed"):
            print(f"{'':>6}  {d.last_error}")
    return 0


def _cmd_purge(cfg: NodeConfig, args: argparse.Namespace) -> int:
    import getpass

    from node.retention import purge_by_admin

    done = purge_by_admin(cfg, _open(cfg), args.study, user=getpass.getuser(), reason=args.reason)
    if done is None:
        print(
            f"ainode purge: no study {args.study} in the index (or purged already)", file=sys.stderr
        )
        return 1
    print(
        f"study {args.study} purged: {len(done.instance_paths)} instance(s) and "
        f"{len(done.result_paths)} result object(s) deleted; its jobs and deliveries stopped"
    )
    return 0


def _cmd_analyze(cfg: NodeConfig, args: argparse.Namespace) -> int:
    from inference.analyze import AnalyzeError, analyze

    configure_logging(cfg.logging)
    try:
        return analyze(cfg, args.paths, args.out, pipelines=args.pipeline)
    except AnalyzeError as exc:
        print(f"ainode analyze: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # training has its own command line (python -m training)
        from training.__main__ import main as train_main

        return train_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from node.demo import run_demo

        return run_demo(send_to=args.send_to, work=args.work, port=args.port)
    try:
        cfg = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print(f"ainode: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        return _cmd_check_config(cfg)
    from storage.db import DatabaseError

    try:
        return _run(cfg, args)
    except DatabaseError as exc:
        print(f"ainode {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(cfg: NodeConfig, args: argparse.Namespace) -> int:
    if args.command == "db":
        return _cmd_db(cfg, args.action)
    if args.command == "status":
        return _cmd_status(cfg)
    if args.command == "worker":
        try:
            cfg = _worker_config(cfg, args.device, args.pipelines)
        except ConfigError as exc:
            print(f"ainode worker: {exc}", file=sys.stderr)
            return 2
        return _cmd_worker(cfg)
    if args.command == "jobs":
        return _cmd_jobs(cfg, args)
    if args.command == "deliveries":
        return _cmd_deliveries(cfg, args)
    if args.command == "analyze":
        return _cmd_analyze(cfg, args)
    if args.command == "purge":
        return _cmd_purge(cfg, args)
    if args.command == "export":
        return cmd_export(cfg, args, lambda: _open(cfg))
    return _cmd_serve(cfg)


if __name__ == "__main__":
    sys.exit(main())
