"""What the benchmarks share: the synthetic CT study they run on, peak RSS, timed threads."""

from __future__ import annotations

import atexit
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GENERATOR = Path(__file__).resolve().parent / "make_study.py"


def temp_folder(prefix: str, *, keep: bool = False) -> Path:
    """A new temporary folder, removed when the benchmark's process ends (a CT run leaves
    hundreds of MB; earlier runs left them in /tmp) unless ``keep``: then its path is
    printed at the end."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if keep:
        atexit.register(print, f"\nkept {work}")
    else:
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ct_study(data: Path, slices: int) -> list[Path]:
    """The files of the 512x512 CT in ``data/ct``, made by make_study.py if absent."""
    if not (data / "ct").is_dir():
        subprocess.run(
            [
                sys.executable,
                str(GENERATOR),
                "--out",
                str(data),
                "--ct-slices",
                str(slices),
                "--skip-small",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return sorted((data / "ct").glob("*.dcm"))


def run_threads(threads: list[threading.Thread]) -> float:
    """Start the threads together, wait for all; the seconds that took."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start
