from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.spool import Spool, is_safe_uid
from tests.storage.stored import files_in as _files_in


def test_write_is_atomic_and_prepare_clears_partial_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data")
    assert spool.prepare() == 0
    path = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(path, [b"abc", b"def"]) == 6
    assert path.read_bytes() == b"abcdef"
    assert _files_in(spool.tmp_dir) == []
    staged, size = spool.stage([b"partial"], "1.2.3.5")
    assert size == 7 and staged.fd is not None and staged.path is None  # O_TMPFILE here
    # Staged: the bytes are on disk under no name at all, and nothing is under tmp/.
    assert _files_in(spool.data_dir) == [path]
    spool.discard(staged)
    assert not staged.exists()
    # Where O_TMPFILE is not available, staged files have names in tmp/ (cleared at start).
    named = Spool(tmp_path / "data", unnamed=False)
    staged, _ = named.stage([b"partial"], "1.2.3.5")
    assert staged.path is not None and staged.path.parent == spool.tmp_dir
    assert not (path.parent / "1.2.3.5.dcm").exists()
    assert Spool(tmp_path / "data").prepare() == 1
    assert not staged.exists()


def test_a_crash_while_staging_leaves_nothing(tmp_path: Path) -> None:
    """kill -9 with a file staged (written and fsynced, not published): no file remains."""
    import subprocess
    import sys

    data = tmp_path / "data"
    Spool(data).prepare()
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from storage.spool import Spool\n"
        f"staged, _ = Spool(Path({str(data)!r})).stage([b'x' * 4096], '1.2.3')\n"
        "assert staged.fd is not None\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], timeout=60)
    assert done.returncode == -9
    assert _files_in(data) == []
    assert Spool(data).prepare() == 0


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "tmp-name"])
def test_failed_write_leaves_nothing(tmp_path: Path, unnamed: bool) -> None:
    spool = Spool(tmp_path / "data", unnamed=unnamed)
    spool.prepare()

    def chunks():
        yield b"x" * 10
        raise OSError(28, "No space left on device")

    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        spool.stage(chunks(), "1.2")
    assert _files_in(spool.data_dir) == []
    assert len(os.listdir("/proc/self/fd")) == open_before  # no descriptor left open


@pytest.mark.parametrize("uid", ["", "../../etc", "1.2.a", "1." + "2" * 70, "1..2", "/1.2"])
def test_unsafe_uids_never_become_paths(tmp_path: Path, uid: str) -> None:
    assert not is_safe_uid(uid)
    with pytest.raises(ValueError, match="not a valid UID"):
        Spool(tmp_path).instance_path("1.2", "1.2.3", uid)


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "tmp-name"])
def test_publish_never_overwrites_a_stored_file(tmp_path: Path, unnamed: bool) -> None:
    spool = Spool(tmp_path / "data", unnamed=unnamed)
    spool.prepare()
    path = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    spool.write(path, [b"old"])
    staged, _ = spool.stage([b"new"], "1.2.3.4")
    published = spool.publish(staged, path)
    assert published != path and published.parent == path.parent
    assert path.read_bytes() == b"old" and published.read_bytes() == b"new"
    assert not staged.exists()
    with pytest.raises(FileExistsError):
        spool.write(path, [b"other"])
    assert path.read_bytes() == b"old"
    assert sorted(_files_in(spool.data_dir / "instances")) == sorted([path, published])


def test_prepare_spares_young_result_files_of_a_running_worker(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data", unnamed=False)  # (O_TMPFILE leaves no files at all)
    spool.prepare()
    young, _ = spool.stage([b"x"], "r", folder=spool.tmp_dir / "results")
    partial, _ = spool.stage([b"y"], "i")
    assert spool.prepare(grace_s=300) == 1
    assert young.exists() and not partial.exists()
    assert spool.prepare(grace_s=0) == 1
    assert not young.exists()


def test_quarantine_keeps_the_relative_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data")
    spool.prepare()
    path = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    spool.write(path, [b"abc"])
    moved = spool.quarantine(path)
    assert moved == spool.data_dir / "orphans" / "instances" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert moved.read_bytes() == b"abc" and not path.exists()
