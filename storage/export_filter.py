"""What ``ainode export`` may select by, as a plain record (no database import: the command
line builds its options from it at every start; :mod:`storage.export_select` runs it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OUTCOMES", "StudyFilter"]

#: Job outcomes a selection may ask for; "declined": a model found a series outside its domain.
OUTCOMES = ("succeeded", "dead", "declined")


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyFilter:
    study_instance_uids: tuple[str, ...] = ()
    date_from: str = ""  # YYYYMMDD, inclusive
    date_to: str = ""
    modality: str = ""
    pipeline: str = ""
    outcome: str = ""  # one of OUTCOMES; with or without pipeline
