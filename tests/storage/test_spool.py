from __future__ import annotations

from pathlib import Path

import pytest

from storage.spool import Spool, is_safe_uid


def test_write_is_atomic_and_prepare_clears_partial_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data")
    assert spool.prepare() == 0
    path = spool.instance_path("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(path, [b"abc", b"def"]) == 6
    assert path.read_bytes() == b"abcdef"
    assert list(spool.tmp_dir.iterdir()) == []
    staged, size = spool.stage([b"partial"], "1.2.3.5")
    assert size == 7 and staged.parent == spool.tmp_dir
    # A crash here leaves the staged file in tmp/, never under instances/.
    assert not (path.parent / "1.2.3.5.dcm").exists()
    assert Spool(tmp_path / "data").prepare() == 1
    assert not staged.exists()


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data")
    spool.prepare()

    def chunks():
        yield b"x" * 10
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.stage(chunks(), "1.2")
    assert list(spool.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("uid", ["", "../../etc", "1.2.a", "1." + "2" * 70, "1..2", "/1.2"])
def test_unsafe_uids_never_become_paths(tmp_path: Path, uid: str) -> None:
    assert not is_safe_uid(uid)
    with pytest.raises(ValueError, match="not a valid UID"):
        Spool(tmp_path).instance_path("1.2", "1.2.3", uid)
