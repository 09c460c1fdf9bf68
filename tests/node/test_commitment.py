"""Storage commitment: the request, the report's bookkeeping, and bad reports.

Against the project's small pynetdicom SCP of tests/node/test_send.py (it
takes N-ACTIONs and never reports) and, for the report, a running node that a
pynetdicom requestor sends N-EVENT-REPORTs to. The end-to-end proof with a
real PACS is tests/node/test_results_delivery.py (Orthanc).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from node.commitment import STORAGE_COMMITMENT, CommitmentBook, CommitmentReport, parse_report
from node.delivery import deliver_due
from storage import deliveries
from tests.node.test_send import rows_of, scp_factory, setup_results
from tests.receivers import both_receivers  # noqa: F401 (every test here on both paths)

__all__ = ["scp_factory"]  # the fixture, for pytest

COMMIT = "storage_commitment = true\ncommitment_timeout_s = 1"


def _report(transaction: str, committed: list[str], failed: list[tuple[str, int]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    refs = []
    for uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        refs.append(item)
    info.ReferencedSOPSequence = refs
    bad = []
    for uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = reason
        bad.append(item)
    if bad:
        info.FailedSOPSequence = bad
    return info


def test_stored_objects_are_sent_then_asked_about_in_one_request(
    write_config, sessions: sessionmaker[Session], tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0x0000, commitment=True)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port, destination=COMMIT)
    assert deliver_due(cfg, sessions, "pacs") == 2
    rows = rows_of(sessions)
    assert {r.status for r in rows} == {"sent"}
    assert all(r.attempts == 0 for r in rows)  # counted when the commitment ends
    (action,) = scp.actions
    assert {r.transaction_uid for r in rows} == {str(action.TransactionUID)}
    asked = {str(i.ReferencedSOPInstanceUID) for i in action.ReferencedSOPSequence}
    assert asked == {r.result.sop_instance_uid for r in rows}
    # Nothing more to send or ask until a report comes or the timeout passes.
    assert deliver_due(cfg, sessions, "pacs") == 0 and len(scp.actions) == 1


def test_report_confirms_and_fails_only_for_the_destination_asked(
    write_config, sessions: sessionmaker[Session], tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0x0000, commitment=True)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port, destination=COMMIT)
    deliver_due(cfg, sessions, "pacs")
    first, second = rows_of(sessions)[::-1]
    transaction = str(first.transaction_uid)
    book = CommitmentBook(cfg, sessions)
    report = CommitmentReport(
        transaction_uid=transaction,
        committed=(first.result.sop_instance_uid,),
        failed=((second.result.sop_instance_uid, 0x0112),),
    )
    # Another AE (or a transaction nobody asked about) changes nothing.
    assert book.record("INTRUDER", report) == (0, 0)
    wrong = CommitmentReport(transaction_uid="1.2.3.999", committed=report.committed, failed=())
    assert book.record("FAKEPACS", wrong) == (0, 0)
    assert {r.status for r in rows_of(sessions)} == {"sent"}

    assert book.record("FAKEPACS", report) == (1, 1)
    by_id = {r.id: r for r in rows_of(sessions)}
    assert by_id[first.id].status == "confirmed" and by_id[first.id].attempts == 1
    failed = by_id[second.id]
    assert failed.status == "pending" and failed.attempts == 1
    assert failed.last_status == 0x0112 and failed.transaction_uid is None
    assert (
        failed.last_error
        == "pacs did not commit it: failure reason 0x0112 (no such object instance)"
    )
    # A repeated report is late: the confirmed one stays, nothing is counted twice.
    assert book.record("FAKEPACS", report) == (0, 0)

    # The failed one goes again, and is asked about in a new transaction.
    assert deliver_due(cfg, sessions, "pacs") == 1
    again = {r.id: r for r in rows_of(sessions)}[second.id]
    assert again.status == "sent" and again.transaction_uid not in (None, transaction)
    assert len(scp.received) == 3 and len(scp.actions) == 2


def test_no_report_within_the_timeout_sends_again(
    write_config, sessions: sessionmaker[Session], tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0x0000, commitment=True)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port, n=1, destination=COMMIT)
    deliver_due(cfg, sessions, "pacs")
    (row,) = rows_of(sessions)
    time.sleep(1.2)  # commitment_timeout_s = 1
    assert deliver_due(cfg, sessions, "pacs") == 1
    (again,) = rows_of(sessions)
    assert again.status == "sent" and again.attempts == 1
    assert again.transaction_uid not in (None, row.transaction_uid)
    assert len(scp.received) == 2 and len(scp.actions) == 2


def test_a_destination_without_storage_commitment_is_a_named_failure(
    write_config, sessions: sessionmaker[Session], tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0x0000)  # stores, but does not offer Storage Commitment
    cfg = setup_results(write_config, sessions, tmp_path, scp.port, n=1, destination=COMMIT)
    deliver_due(cfg, sessions, "pacs")
    (row,) = rows_of(sessions)
    assert row.status == "pending" and row.attempts == 1
    assert row.last_error == (
        f"cannot associate with FAKEPACS@127.0.0.1:{scp.port}: it accepts none of the SOP "
        "classes proposed (Storage Commitment Push Model SOP Class) (set storage_commitment "
        "= false for it, or enable it on the PACS)"
    )


def test_crash_between_store_and_request_is_asked_about_on_the_next_run(
    write_config, sessions: sessionmaker[Session], tmp_path: Path, scp_factory
) -> None:
    scp = scp_factory(0x0000, commitment=True)
    cfg = setup_results(write_config, sessions, tmp_path, scp.port, n=1, destination=COMMIT)
    (row,) = rows_of(sessions)
    with sessions.begin() as s:  # what a crash right after the C-STORE leaves
        deliveries.mark_delivered(
            s, delivery_id=row.id, status=0, comment=None, now=utc_now(), awaiting_commitment=True
        )
    assert deliver_due(cfg, sessions, "pacs") == 0
    (row,) = rows_of(sessions)
    assert row.status == "sent" and row.transaction_uid is not None
    assert scp.received == [] and len(scp.actions) == 1


def test_parse_report_refuses_malformed_event_information() -> None:
    ok = parse_report(2, _report("1.2.3", ["1.1"], [("1.2", 0x0110)]))
    assert ok.committed == ("1.1",) and ok.failed == (("1.2", 0x0110),)
    with pytest.raises(ValueError, match="Transaction UID"):
        parse_report(1, Dataset())
    with pytest.raises(ValueError, match="Referenced SOP Instance UID"):
        parse_report(1, _report("1.2.3", [""], []))
    with pytest.raises(LookupError):
        parse_report(7, _report("1.2.3", [], []))


@pytest.mark.network
def test_node_answers_bad_reports_with_a_status_and_keeps_running(node_factory) -> None:
    """A report with no Transaction UID, one of a wrong event type, one from nobody asked."""
    _node, cfg = node_factory('[[peers]]\nae_title = "PACS"\n')
    ae = AE(ae_title="PACS")
    ae.add_requested_context(STORAGE_COMMITMENT)
    role = build_role(STORAGE_COMMITMENT, scp_role=True, scu_role=False)
    assoc = ae.associate("127.0.0.1", cfg.node.port, ae_title="AINODE", ext_neg=[role])
    assert assoc.is_established
    try:
        instance = "1.2.840.10008.1.20.1.1"
        no_transaction = _report("1.2.3", ["1.1"], [])
        del no_transaction.TransactionUID
        for info in (None, no_transaction):
            status, _ = assoc.send_n_event_report(info, 1, STORAGE_COMMITMENT, instance)
            assert status.Status == 0x0115
        status, _ = assoc.send_n_event_report(
            _report("1.2.3", [], []), 9, STORAGE_COMMITMENT, instance
        )
        assert status.Status == 0x0113
        status, _ = assoc.send_n_event_report(
            _report("1.2.3", ["1.1"], []), 1, STORAGE_COMMITMENT, instance
        )
        assert status.Status == 0x0000  # nobody asked: ignored, but the report is taken
    finally:
        assoc.release()
    intruder = AE(ae_title="NOBODY")
    intruder.add_requested_context(STORAGE_COMMITMENT)
    refused = intruder.associate("127.0.0.1", cfg.node.port, ae_title="AINODE", ext_neg=[role])
    assert refused.is_rejected
