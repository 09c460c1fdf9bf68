"""A study's priors: the same patient's earlier studies in the index, newest first."""

from __future__ import annotations

from pathlib import Path

from storage.lookup import patient_history
from tests.storage.stored import store


def _store(sessions, study: str, *, patient: str, date: str) -> None:
    """One instance of a study: ``<study>.1.1`` in series ``<study>.1``."""
    store(
        sessions,
        f"{study}.1.1",
        study=study,
        series=f"{study}.1",
        patient_id=patient,
        study_date=date,
    )


def _history(sessions, study: str, limit: int = 10):
    with sessions.begin() as s:
        return patient_history(s, study, limit=limit)


def test_priors_are_the_same_patients_earlier_studies_newest_first(sessions) -> None:
    _store(sessions, "1.1", patient="P1", date="20240105")
    _store(sessions, "1.2", patient="P1", date="20250310")
    _store(sessions, "1.3", patient="P1", date="20251120")  # the current study
    _store(sessions, "1.4", patient="P1", date="20251120")  # same day: not a prior
    _store(sessions, "1.5", patient="P1", date="20260101")  # later: not a prior
    _store(sessions, "2.1", patient="P2", date="20240101")  # another patient
    _store(sessions, "1.6", patient="P1", date="")  # undated: cannot be ordered
    history = _history(sessions, "1.3")
    assert history.study_date == "20251120" and history.reason == ""
    assert [p.study_instance_uid for p in history.priors] == ["1.2", "1.1"]
    assert [p.study_date for p in history.priors] == ["20250310", "20240105"]
    (series,) = history.priors[0].series
    assert series.series_instance_uid == "1.2.1" and series.paths == (Path("/x/1.2.1.1.dcm"),)
    assert [p.study_instance_uid for p in _history(sessions, "1.3", limit=1).priors] == ["1.2"]


def test_no_priors_says_why(sessions) -> None:
    _store(sessions, "1.1", patient="P1", date="20240105")
    _store(sessions, "3.1", patient="", date="20240105")
    _store(sessions, "4.1", patient="P4", date="")
    assert _history(sessions, "1.1").reason == "no earlier study of this patient in the store"
    assert _history(sessions, "3.1").reason == "the study has no Patient ID"
    assert _history(sessions, "4.1").reason == "the study has no Study Date"
    assert _history(sessions, "9.9").reason == "study not in the index"
    assert all(not _history(sessions, uid).priors for uid in ("1.1", "3.1", "4.1", "9.9"))
