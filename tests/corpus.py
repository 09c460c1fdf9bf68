"""The pydicom test corpus (pydicom's own files and the pydicom-data package), offline."""

from __future__ import annotations

import warnings
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT, get_external_sources
from pydicom.dataset import Dataset

from node.contexts import storage_sop_class_uids
from storage.spool import is_safe_uid


def corpus_files() -> list[Path]:
    """Every file of the corpus, found without any download."""
    names = {p.name for p in (Path(DATA_ROOT) / "test_files").glob("*") if p.is_file()}
    for source in get_external_sources().values():
        names |= {p.name for p in Path(source.data_path).glob("*") if p.is_file()}
    paths = []
    for name in sorted(names):
        found = get_testdata_file(name, download=False)
        if isinstance(found, str):
            paths.append(Path(found))
    return paths


def read_header(path: Path) -> Dataset:
    """dcmread up to the pixel data, quiet about the corpus's deliberate oddities."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, stop_before_pixels=True)
        # Convert every value now (pydicom converts lazily, outside this block).
        for dataset in (ds, getattr(ds, "file_meta", None) or Dataset()):
            for _ in dataset:
                pass
        return ds


def storable(path: Path) -> bool:
    """A Part 10 file of a storage SOP class that a PACS could send to the node."""
    try:
        ds = read_header(path)
    except Exception:
        return False
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta or "MediaStorageSOPClassUID" not in meta:
        return False
    uids = [ds.get(k, "") for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
    return (
        str(ds.get("SOPClassUID", "")) in _STORAGE
        and str(meta.MediaStorageSOPClassUID) == str(ds.SOPClassUID)
        and str(meta.get("MediaStorageSOPInstanceUID", "")) == str(uids[0])
        and all(is_safe_uid(str(u)) for u in uids)
    )


_STORAGE = set(storage_sop_class_uids())
