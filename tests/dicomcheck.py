"""Validate DICOM objects with dicom3tools: dciodvfy per file, dcentvfy across the set.

Every object the node writes (SR, SEG, Parametric Map) and every synthetic
file training writes goes through here in the tests. dciodvfy checks each file
against its IOD (modules, attributes, values); dcentvfy checks that patient,
study, series and frame-of-reference attributes agree across files.

A few messages are known false positives of the 2022 dicom3tools dictionary
that Debian ships; each is listed with why, and filtered only when asked
(``known=True``). Anything else that dicom3tools calls an error fails.

Also a command: ``python -m tests.dicomcheck [--entity/--no-entity] PATH...``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KNOWN_FALSE_POSITIVES", "FileCheck", "Validation", "missing_tools", "validate"]

TOOLS = ("dciodvfy", "dcentvfy")

#: (pattern, why it is not an error of ours)
KNOWN_FALSE_POSITIVES: tuple[tuple[str, str], ...] = (
    (
        r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID",
        "Device UID in the Contributing Equipment Sequence is standard today (IHE AIR asks "
        "for it) but unknown to the 2022 dicom3tools dictionary",
    ),
    (
        r"Dicom dataset contains attributes not present in standard DICOM IOD - "
        r"this is a Standard Extended SOP Class",
        "a consequence of the Device UID line above",
    ),
    (
        r"Different information entities for attribute - Element=<AccessionNumber> "
        r"IE <(Series|Study)> versus <(Series|Study)>",
        "dcentvfy files Accession Number under Series for some IODs and Study for SR",
    ),
    (
        r"Unrecognized defined term <QUANTITY> for value 4 of attribute <(Image|Frame) Type>",
        "Parametric Map Image/Frame Type value 4 QUANTITY is newer than the 2022 dictionary",
    ),
)

_TAGGED = re.compile(r"^(\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\))[^-]*- (Error|Warning) - (.*)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileCheck:
    path: Path
    iod: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    files: tuple[FileCheck, ...]
    entity_errors: tuple[str, ...] = ()
    entity_warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.entity_errors and all(not f.errors for f in self.files)

    def iods(self) -> dict[str, str]:
        """File name -> the IOD dciodvfy recognised."""
        return {f.path.name: f.iod for f in self.files}

    def report(self) -> str:
        lines = []
        for f in self.files:
            status = "FAIL" if f.errors else "PASS"
            lines.append(f"E={len(f.errors)} W={len(f.warnings)} {status} {f.iod} {f.path}")
            lines += [f"    {e}" for e in f.errors]
        if self.entity_errors or self.entity_warnings:
            lines.append(f"dcentvfy: E={len(self.entity_errors)} W={len(self.entity_warnings)}")
            lines += [f"    {e}" for e in self.entity_errors]
        return "\n".join(lines)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _messages(output: str, ignore: list[re.Pattern[str]]) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    for raw in output.replace("\r", "").splitlines():
        line = raw.strip()
        if m := _TAGGED.match(line):  # "(0x...)  ?  - Warning - text" -> "Warning - text [tag]"
            line = f"{m.group(2)} - {m.group(3)} [{m.group(1)}]"
        if not line.startswith(("Error", "Warning")):
            continue
        if any(p.search(line) for p in ignore):
            continue
        (errors if line.startswith("Error") else warnings).append(line)
    return errors, warnings


def _part10(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _files(paths: Iterable[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and _part10(p))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError("no DICOM Part 10 file among " + ", ".join(map(str, paths)))
    return found


def validate(
    *paths: Path, entity: bool = True, known: bool = True, timeout_s: float = 300
) -> Validation:
    """Run dciodvfy on every Part 10 file below ``paths`` and dcentvfy on them all.

    Raises
    ------
    FileNotFoundError
        A tool is not installed, or there is no DICOM file to check.
    """
    if missing := missing_tools():
        raise FileNotFoundError(f"not installed: {', '.join(missing)} (Debian: dicom3tools)")
    ignore = [re.compile(p) for p, _why in KNOWN_FALSE_POSITIVES] if known else []
    checks = []
    for path in _files(paths):
        run = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=timeout_s
        )
        output = run.stdout + run.stderr
        errors, warnings = _messages(output, ignore)
        if run.returncode < 0 or run.returncode > 128:
            errors.append(f"Error - dciodvfy died (status {run.returncode})")
        iod = next(
            (ln.strip() for ln in output.splitlines() if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", ln)),
            "-",
        )
        checks.append(FileCheck(path=path, iod=iod, errors=tuple(errors), warnings=tuple(warnings)))
    entity_errors: list[str] = []
    entity_warnings: list[str] = []
    if entity:
        run = subprocess.run(
            ["dcentvfy", *(str(c.path) for c in checks)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        entity_errors, entity_warnings = _messages(run.stdout + run.stderr, ignore)
        if run.returncode < 0 or run.returncode > 128:
            entity_errors.append(f"Error - dcentvfy died (status {run.returncode})")
    return Validation(
        files=tuple(checks),
        entity_errors=tuple(entity_errors),
        entity_warnings=tuple(entity_warnings),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.dicomcheck", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--no-entity", action="store_true", help="skip dcentvfy")
    parser.add_argument("--strict", action="store_true", help="do not filter known false positives")
    args = parser.parse_args(argv)
    result = validate(*args.paths, entity=not args.no_entity, known=not args.strict)
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
