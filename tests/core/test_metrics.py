"""core.metrics from many threads at once, as a listener's first associations count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A fresh process: the collectors are made on first use, and the first use comes from
# every association thread at once (two storescu calling in the same millisecond).
_FIRST_USE_FROM_16_THREADS = """
import sys, threading
from core import metrics
barrier = threading.Barrier(16)
errors = []
def count():
    barrier.wait()
    try:
        metrics.association("accepted")
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=count) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
sys.exit(1 if errors else 0)
"""


def test_the_first_counts_from_many_threads_at_once_all_count(tmp_path: Path) -> None:
    """Made once, whoever comes first: a second copy of a collector is refused by the registry
    ("Duplicated timeseries"), and that error once broke the access decision of an
    association (its C-STOREs were then refused 0x0124)."""
    for attempt in range(5):  # the race needs the threads to meet; each try is a new process
        (tmp_path / str(attempt)).mkdir()
        run = subprocess.run(
            [sys.executable, "-c", _FIRST_USE_FROM_16_THREADS],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / str(attempt)), "PATH": ""},
            cwd=Path(__file__).parents[2],
        )
        assert run.returncode == 0, run.stdout + run.stderr
