"""Each library lives in one place (STYLE.md rule 2); packages declare their surface."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "storage", "inference", "training")

ALLOWED = {
    "pynetdicom": {"node/server.py", "node/handlers.py", "node/send.py"},
    "pydicom": {
        "node/dicom_in.py",
        "node/volume_in.py",
        "node/seg_in.py",  # ground-truth SEG objects for training
        "node/handlers.py",
        "node/results/",
        "node/send.py",
        "training/synthetic.py",  # writes the synthetic training data as DICOM
    },
    "highdicom": {"node/results/"},
    "torch": {"inference/", "training/"},
    "sqlalchemy": {
        "storage/",
        "node/receive.py",
        "node/server.py",
        "node/service.py",
        "node/housekeeping.py",
        "node/delivery.py",
        "node/report.py",
        "inference/worker.py",
    },
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize("library", sorted(ALLOWED))
def test_library_used_only_where_allowed(library: str) -> None:
    offenders = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if library in _imports(path) and not any(rel.startswith(a) for a in ALLOWED[library]):
            offenders.append(rel)
    assert offenders == []


@pytest.mark.parametrize(
    "module",
    sorted(
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for p in _modules()
        if "migrations" not in p.parts and p.name not in ("__init__.py", "__main__.py")
    ),
)
def test_public_names_are_declared(module: str) -> None:
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{module} has no __all__"
    for name in exported:
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"
