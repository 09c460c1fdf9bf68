"""``ainode demo``: the whole path in one command, on synthetic studies.

Starts ``ainode serve`` (listener, scheduler, one worker) with the bundled
models in a work folder, writes a synthetic CT with lesions, an anatomical chest
CT with a nodule (for the lesion detector), a synthetic 12-lead ECG and a
synthetic patient's CT follow-ups (so the progression model compares each
study with its priors), sends them over DICOM (C-STORE), waits
for the results and prints the findings and where the SR, SEG and heat map went. ``--send-to
AE@HOST:PORT`` adds that PACS as the destination of every result.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import DestinationConfig
from core.config_file import load_config
from node.send import AssociationFailed, SendOutcome, items_for, send_files
from storage import deliveries, queue
from storage.db import create_sqlite_engine, make_sessionmaker
from storage.deliveries import DeliveryRecord, ResultRecord
from storage.outcomes import OutcomeRecord, list_outcomes
from storage.records import JobRecord

__all__ = ["DemoError", "parse_destination", "run_demo"]

ROOT = Path(__file__).resolve().parents[1]
_DEST_RE = re.compile(r"^([^@]{1,16})@([^:]+):(\d{1,5})$")
# Seeds of the demo: a CT with lesions (so it shows a SEG) whose attention hot spot
# lies near the middle slice, where OHIF opens the heat map; a patient with CT
# follow-ups for the progression model.
_CT_SEED, _ECG_SEED, _FOLLOW_UP_SEED = 7302, 7303, 7314
# An anatomical chest CT with one solid 21.7 mm nodule that the detector finds and outlines
# (Dice 0.97 against the generator's mask): a demo shows a case that works, and an easy one.
# Of seeds 7330-7419, 29 drew a solid nodule >= 14 mm: the detector found 28 (outline Dice
# median 0.90), and 7 of those 29 scans also had a detection centred off the nodule. Small,
# part-solid and ground-glass nodules are where it misses (held-out figures in its model
# card; an earlier demo seed, 7323, had a part-solid nodule whose outline covered only the
# solid core). The nodule reaches the scan's top slice, where OHIF opens the SEG.
_CHEST_SEED = 7371
_TIMEOUT_S = 600.0
_PIPELINES = 3  # every study is queued once for each pipeline


class DemoError(Exception):
    """The demo could not run: the reason names what to fix."""


def parse_destination(text: str) -> DestinationConfig:
    """``AE@HOST:PORT`` -> a destination named ``pacs``."""
    match = _DEST_RE.match(text)
    if not match or not 0 < int(match.group(3)) < 65536:
        raise DemoError(f"--send-to must look like PACS@10.0.0.5:104 (got {text!r})")
    return DestinationConfig(
        name="pacs", ae_title=match.group(1), host=match.group(2), port=int(match.group(3))
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(work: Path, port: int, dest: DestinationConfig | None) -> Path:
    models = ROOT / "models"
    destinations = (
        f'[[destinations]]\nname = "pacs"\nae_title = "{dest.ae_title}"\n'
        f'host = "{dest.host}"\nport = {dest.port}\n'
        if dest
        else ""
    )
    send = 'destinations = ["pacs"]\n' if dest else ""
    text = f"""# written by ainode demo
[node]
ae_title = "AINODE"
bind_address = "127.0.0.1"
port = {port}
listener_processes = 1

[storage]
data_dir = "data"
min_free_mb = 50

[completion]
quiet_period_s = 2
check_interval_s = 0.5

[inference]
workers = 1
poll_interval_s = 0.2

[delivery]
check_interval_s = 0.5
retry_wait_s = 5

[logging]
level = "WARNING"

[web]
enabled = false

{destinations}
[[pipelines]]
name = "ct-lesions"
models = ["{models / "lesion-seg"}", "{models / "lesion-class"}", "{models / "lesion-change"}"]
series_number = 900
{send}[pipelines.match]
modality = "CT"
min_instances = 8

[[pipelines]]
name = "ct-detect"
models = ["{models / "lesion-detect"}"]
series_number = 920
{send}[pipelines.match]
modality = "CT"
min_instances = 8

[[pipelines]]
name = "ecg-rhythm"
models = ["{models / "ecg-rhythm"}"]
series_number = 910
{send}[pipelines.match]
sop_class = "1.2.840.10008.5.1.4.1.1.9.1.1"
"""
    path = work / "config.toml"
    path.write_text(text)
    return path


def _studies(work: Path) -> tuple[list[Path], int]:
    """The demo's files, and how many studies they make."""
    from training.anatomy import generate_anatomical_ct
    from training.synthetic import generate_ct, generate_ecg, generate_longitudinal

    generate_ct(work / "input" / "ct", 1, _CT_SEED)
    generate_anatomical_ct(
        work / "input" / "chest", 1, _CHEST_SEED, section="chest", lesion_count=1
    )
    generate_ecg(work / "input" / "ecg", 1, _ECG_SEED)
    labels = generate_longitudinal(work / "input" / "follow-up", 1, _FOLLOW_UP_SEED)
    follow_ups = len(labels.read_text().splitlines()) - 1
    return sorted((work / "input").rglob("*.dcm")), 3 + follow_ups


def _send(files: list[Path], port: int) -> int:
    items = items_for(files)
    sent = []

    def note(outcome: SendOutcome) -> None:
        if not outcome.delivered:
            raise DemoError(f"the node refused {files[outcome.key]}: {outcome.detail}")
        sent.append(outcome.key)

    node = DestinationConfig(name="node", ae_title="AINODE", host="127.0.0.1", port=port)
    send_files(node, items, note, calling_ae="DEMO", connect_timeout_s=10, dimse_timeout_s=60)
    return len(sent)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"ainode serve exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DemoError("ainode serve did not open its port in time")


@dataclass(frozen=True, slots=True, kw_only=True)
class _State:
    jobs: list[JobRecord]
    outcomes: list[OutcomeRecord]
    results: list[ResultRecord]
    deliveries: list[DeliveryRecord]


def _wait_results(
    config: Path, proc: subprocess.Popen[bytes], want_delivery: bool, jobs: int
) -> _State:
    engine = create_sqlite_engine(load_config(config).storage.database_path)
    sessions = make_sessionmaker(engine)

    def progress() -> _State:
        with sessions.begin() as s:
            return _State(
                jobs=queue.list_jobs(s, limit=100),
                outcomes=list_outcomes(s),
                results=deliveries.list_results(s),
                deliveries=deliveries.list_deliveries(s, limit=100),
            )

    deadline = time.monotonic() + _TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"ainode serve exited with status {proc.returncode}")
            state = progress()
            finished = all(j.status in ("succeeded", "dead") for j in state.jobs)
            if len(state.jobs) == jobs and finished:
                sent = all(d.status != "pending" or d.attempts > 0 for d in state.deliveries)
                if not want_delivery or sent:
                    return state
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise DemoError(f"no results within {_TIMEOUT_S:.0f} s (see ainode status)")


def _print(state: _State) -> None:
    print("\nfindings")
    for o in state.outcomes:
        if o.result.get("not_run"):
            print(f"  {o.model_name:13} not run: {o.result['not_run']}")
        if o.result.get("declined"):
            print(f"  {o.model_name:13} not analysed: {o.result['declined']}")
        priors = o.result.get("extra", {}).get("priors", [])
        if priors:
            days = ", ".join(f"{p['days_before']} days" for p in priors)
            print(f"  {o.model_name:13} compared with {len(priors)} prior(s) ({days} before)")
        for f in o.result.get("findings", []):
            mark = "POSITIVE" if f["positive"] else ""
            print(f"  {o.model_name:13} {f['label']:14} p={f['probability']:.3f}  {mark}")
        for n, lesion in enumerate(o.result.get("lesions", []), start=1):
            print(
                f"  {o.model_name:13} lesion {n:<7} {lesion['volume_mm3']:8.1f} mm3, "
                f"longest diameter {lesion['longest_diameter_mm']:.1f} mm"
            )
    for j in state.jobs:
        if j.status == "dead":
            print(f"  job {j.id} ({j.pipeline}) failed: {j.last_error}")
    print("\nresult objects")
    delivered = {d.result.sop_instance_uid: d for d in state.deliveries}
    for r in state.results:
        d = delivered.get(r.sop_instance_uid)
        where = "kept in the node (no destination)"
        if d is not None:
            where = f"{d.status} to {d.destination}" + (
                f" ({d.last_error})"
                if d.status not in ("delivered", "confirmed") and d.last_error
                else ""
            )
        print(f"  {r.kind:3} {r.path}\n      {where}")


def run_demo(*, send_to: str | None, work: Path | None, port: int) -> int:
    """Run the demo; 0 when every job succeeded."""
    try:
        dest = parse_destination(send_to) if send_to else None
        work = work or Path(tempfile.mkdtemp(prefix="ainode-demo-"))
        work.mkdir(parents=True, exist_ok=True)
        port = port or _free_port()
        config = _write_config(work, port, dest)
        print(f"ainode demo in {work} (node AINODE on 127.0.0.1:{port})")
        files, studies = _studies(work)
        print(
            f"generated {len(files)} synthetic instances in {studies} studies (a CT with "
            "lesions, an anatomical chest CT with a nodule, a 12-lead ECG, a patient's CT "
            "follow-ups)"
        )
        env = {**os.environ, "AINODE_CONFIG": str(config)}
        log = (work / "serve.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
        try:
            _wait_ready(port, proc, time.monotonic() + 120)
            t0 = time.monotonic()
            sent = _send(files, port)
            print(f"sent {sent} instances over DICOM in {time.monotonic() - t0:.1f} s; waiting")
            state = _wait_results(
                config, proc, want_delivery=dest is not None, jobs=studies * _PIPELINES
            )
            print(f"results after {time.monotonic() - t0:.1f} s")
            _print(state)
            (work / "demo.json").write_text(
                json.dumps(
                    {"results": [str(r.path) for r in state.results]},
                    indent=2,
                )
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        print(f"\nnode log: {work / 'serve.log'}; inspect with: ainode status --config {config}")
        return 0 if all(j.status == "succeeded" for j in state.jobs) else 1
    except (DemoError, AssociationFailed) as exc:
        print(f"ainode demo: {exc}", file=sys.stderr)
        return 1
