"""Each library lives in one place (STYLE.md rule 2); imports flow one way; packages declare
their surface."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers, bottom first (core/__init__.py draws them): a package imports only
# packages below it, never one above (no cycles, no reaching up for a helper).
LAYERS = ("core", "storage", "dicomio", "inference", "training", "node")
PACKAGES = LAYERS

ALLOWED = {
    "pynetdicom": {
        "node/server.py",
        "node/handlers.py",
        "node/send.py",
        "node/query.py",
        "node/contexts.py",  # its storage SOP classes and transfer syntaxes, for both receivers
    },
    "pydicom": {
        "node/dicom_in.py",  # the C-STORE header, read without decoding
        "node/dicom_scan.py",  # its fast walk: pydicom's dictionary and charset rules
        "node/handlers.py",  # status datasets
        "node/send.py",
        "node/commitment.py",  # N-ACTION and N-EVENT-REPORT datasets
        "node/query.py",  # C-FIND, C-MOVE and C-GET identifiers
        "dicomio/",
        "training/synthetic.py",  # writes the synthetic training data as DICOM
    },
    "highdicom": {"dicomio/results/"},
    "dicomanonymizer": {"dicomio/deid.py"},  # PS3.15 Table E.1-1, the export's attribute rules
    "starlette": {"node/web/"},
    "jinja2": {"node/web/"},
    "uvicorn": {"node/web/"},
    "prometheus_client": {"node/web/", "core/metrics.py"},
    "torch": {"inference/", "training/"},
    "sqlalchemy": {
        "storage/",
        "node/receive.py",
        "node/server.py",
        "node/service.py",
        "node/housekeeping.py",
        "node/delivery.py",
        "node/commitment.py",  # sessions; its SQL lives in storage/deliveries.py
        "node/prefetch.py",  # sessions; its SQL lives in storage/prefetches.py
        "node/retention.py",
        "node/report.py",
        "node/export.py",  # sessions; the export's queries live in storage/export_select.py
        "node/web/",  # sessions and a health check's SELECT 1; its queries live in storage/
        "inference/worker.py",
    },
}


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    return {m.split(".")[0] for m in _imported_modules(path)}


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


def test_imports_flow_one_way() -> None:
    """No package imports one above it (node > training > inference > dicomio > storage > core)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in _modules():
        own = path.relative_to(ROOT).parts[0]
        for module in sorted(_imported_modules(path)):
            top = module.split(".")[0]
            if top in rank and rank[top] > rank[own]:
                upward.append(f"{path.relative_to(ROOT).as_posix()} imports {module}")
    assert upward == []


def test_the_layer_test_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule above cannot pass vacuously: an upward import is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from node.config import X\n")
    assert "node.config" in _imported_modules(probe)


def test_importing_a_module_does_not_switch_pydicom_settings() -> None:
    """pydicom's global reading/writing modes are not ours to change as a side effect."""
    script = (
        "from pydicom import config\n"
        "before = (config.settings.reading_validation_mode, "
        "config.settings.writing_validation_mode)\n"
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "after = (config.settings.reading_validation_mode, "
        "config.settings.writing_validation_mode)\n"
        "assert after == before, (before, after)\n"
    )
    names = [
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for p in _modules()
        if "migrations" not in p.parts and p.name != "__main__.py"
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *names], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_serve_and_its_listeners_do_not_import_torch() -> None:
    """Listener processes never load a model: importing torch would cost each ~200 MiB."""
    import subprocess
    import sys

    code = (
        "import sys, node.__main__, node.service, node.web.app, node.housekeeping, "
        "inference.spec; print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
