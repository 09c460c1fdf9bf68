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


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "tmp-name"])
def test_staged_bytes_are_the_chunks_in_order_when_writes_stop_short(
    tmp_path: Path, unnamed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gathered writes: every chunk's bytes once, in order, whatever each write took;
    empty chunks, memoryviews of typed arrays and more pieces than one write takes."""
    import array

    spool = Spool(tmp_path / "data", unnamed=unnamed)
    spool.prepare()
    floats = array.array("f", [float(i) for i in range(1000)])
    chunks: list[bytes | memoryview] = [b"head", b"", memoryview(floats), b"tail"]
    chunks += [bytes([i % 251]) * (i % 7) for i in range(700)]  # > one gather of pieces
    expected = b"".join(bytes(c) for c in chunks)
    real = os.writev
    calls = []

    def short(fd: int, views: list[memoryview]) -> int:  # the first 9 bytes at most
        calls.append(len(views))
        prefix, left = [], 9
        for v in views:
            prefix.append(v[:left])
            left -= len(prefix[-1])
            if not left:
                break
        return real(fd, prefix)

    monkeypatch.setattr(os, "writev", short)
    path = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(path, chunks) == len(expected)
    assert path.read_bytes() == expected
    assert max(calls) <= 256 and len(calls) > len(expected) // 10


def test_a_write_that_makes_no_progress_fails(tmp_path: Path, monkeypatch) -> None:
    spool = Spool(tmp_path / "data")
    spool.prepare()
    monkeypatch.setattr(os, "writev", lambda fd, views: 0)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="no progress"):
        spool.stage([b"abc"], "1.2")
    assert _files_in(spool.data_dir) == []
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_free_space_is_asked_afresh_near_the_line(tmp_path: Path, monkeypatch) -> None:
    """A recent figure less what the spool wrote answers only well clear of the line."""
    import shutil
    from collections import namedtuple

    import storage.spool as spool_module

    usage = namedtuple("usage", "total used free")
    free = [10 << 30]
    asked = []

    def disk_usage(path: object) -> object:
        asked.append(path)
        return usage(0, 0, free[0])

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    spool = Spool(tmp_path / "data")
    spool.prepare()
    assert spool.free_bytes(above=1 << 30) == 10 << 30 and len(asked) == 1  # first: asked
    spool.stage([b"x" * 4096], "1.2")
    # Recent, well clear of the line: the figure less the 4096 bytes written since.
    assert spool.free_bytes(above=1 << 30) == (10 << 30) - 4096 and len(asked) == 1
    free[0] = 1 << 30  # something else filled the disk meanwhile
    # Within the slack of the line: asked again, and the truth answers.
    assert spool.free_bytes(above=(10 << 30) - (128 << 20)) == 1 << 30 and len(asked) == 2
    assert spool.free_bytes(above=1) == 1 << 30 and len(asked) == 2  # recent again, clear
    assert spool.free_bytes() == 1 << 30 and len(asked) == 3  # without above: always asked
    clock = [spool_module.time.monotonic() + 0.6]
    monkeypatch.setattr(spool_module.time, "monotonic", lambda: clock[0])
    free[0] = 5 << 30
    assert spool.free_bytes(above=1) == 5 << 30 and len(asked) == 4  # too old: asked
