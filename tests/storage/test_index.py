"""storage.index on both databases: counts, replacement, refusals, as one transaction per store.

On PostgreSQL ``locate`` sends its lock and look-ups in one round trip and
``index_instance`` its writes in another (``storage.fastsql.execute_all``);
these pin down that the rows come out as the one-statement-at-a-time path wrote them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.index import StudyConflict
from storage.models import Instance, ReceiveState, Series, Study
from storage.records import IndexOutcome
from tests.storage.stored import store


def _counts(s: Session) -> dict[str, int]:
    rows = s.execute(select(Series.series_instance_uid, Series.instance_count)).all()
    return {uid: n for uid, n in rows}


def test_instances_are_counted_in_their_series_and_study(
    sessions: sessionmaker[Session],
) -> None:
    first = store(sessions, "1.1.1.1")
    assert first.outcome is IndexOutcome.NEW and first.study_created
    second = store(sessions, "1.1.1.2", modality="CT")
    third = store(sessions, "1.1.2.1", series="1.1.2", modality="SEG")
    assert not second.study_created and not third.study_created
    with sessions.begin() as s:
        study = s.scalars(select(Study)).one()
        assert (study.instance_count, study.modalities) == (3, "CT\\SEG")
        assert _counts(s) == {"1.1.1": 2, "1.1.2": 1}
        assert s.scalars(select(Instance.path).order_by(Instance.id)).all() == [
            "/x/1.1.1.1.dcm",
            "/x/1.1.1.2.dcm",
            "/x/1.1.2.1.dcm",
        ]


def test_a_known_instance_is_kept_or_replaced_and_a_move_is_counted(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, "1.1.1.1")
    store(sessions, "1.1.1.2")
    kept = store(sessions, "1.1.1.1", path="/y/again.dcm")
    assert kept.outcome is IndexOutcome.KEPT_EXISTING
    # The same SOP Instance UID again, now in another series of the study.
    moved = store(sessions, "1.1.1.1", series="1.1.2", path="/y/moved.dcm", replace=True)
    assert moved.outcome is IndexOutcome.REPLACED
    assert moved.previous_path == Path("/x/1.1.1.1.dcm")
    with sessions.begin() as s:
        assert _counts(s) == {"1.1.1": 1, "1.1.2": 1}
        assert s.scalars(select(Study.instance_count)).one() == 2
        assert s.scalars(select(Instance.path).order_by(Instance.id)).all() == [
            "/y/moved.dcm",
            "/x/1.1.1.2.dcm",
        ]
    # Replaced in place by a file at the same path: nothing to delete afterwards.
    again = store(sessions, "1.1.1.1", series="1.1.2", path="/y/moved.dcm", replace=True)
    assert again.outcome is IndexOutcome.REPLACED and again.previous_path is None
    with sessions.begin() as s:
        assert _counts(s) == {"1.1.1": 1, "1.1.2": 1}


def test_an_instance_after_completion_reopens_the_study(sessions: sessionmaker[Session]) -> None:
    store(sessions, "1.1.1.1")
    with sessions.begin() as s:
        for row in (s.scalars(select(Study)).one(), s.scalars(select(Series)).one()):
            row.state = ReceiveState.COMPLETE
    late = store(sessions, "1.1.1.2")
    assert late.study_reopened and not late.study_created
    with sessions.begin() as s:
        study, series = s.scalars(select(Study)).one(), s.scalars(select(Series)).one()
        assert (study.state, study.reopen_count, study.instance_count) == ("receiving", 1, 2)
        assert (series.state, series.reopen_count) == ("receiving", 1)


@pytest.mark.parametrize(
    ("sop", "series", "what"),
    [("1.2.9.9", "1.1.1", "series 1.1.1"), ("1.1.1.1", "1.2.9", "instance 1.1.1.1")],
)
def test_a_uid_already_in_another_study_is_refused_and_nothing_written(
    sessions: sessionmaker[Session], sop: str, series: str, what: str
) -> None:
    store(sessions, "1.1.1.1")
    with pytest.raises(StudyConflict, match=f"^{what} is already stored in study 1.1;"):
        store(sessions, sop, study="1.2", series=series)
    with sessions.begin() as s:
        assert s.scalars(select(Study.study_instance_uid)).all() == ["1.1"]
        assert _counts(s) == {"1.1.1": 1}
        assert s.scalars(select(Instance.sop_instance_uid)).all() == ["1.1.1.1"]
