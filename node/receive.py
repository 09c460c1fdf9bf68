"""Receiving one instance: validate, write durably, index; only then succeed.

This is the whole C-STORE logic without the network, so it can be tested
directly; ``node.handlers`` only adapts pynetdicom events to it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import DuplicatePolicy
from node.dicom_in import file_meta_bytes, read_instance_header
from node.errors import InvalidUid, OutOfResources, SeriesInOtherStudy, UidMismatch
from node.status import StoreStatus
from storage.group_commit import group_of
from storage.index import StudyConflict, index_instance, locate
from storage.records import IndexOutcome, IndexResult, InstanceHeader, StoredInstance
from storage.spool import Spool, is_safe_uid

__all__ = ["ReceiveDeps", "receive_instance"]

logger = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveDeps:
    """What the store handler needs; shared by all association threads."""

    spool: Spool
    sessions: sessionmaker[Session]
    on_duplicate: DuplicatePolicy
    min_free_bytes: int
    clock: Callable[[], datetime] = utc_now
    # Frees disk (evicting processed studies) until that many bytes are free.
    make_room: Callable[[int], bool] | None = None
    # Called in the indexing transaction of a study's first pushed instance
    # (node.prefetch queues what to ask the [[sources]] about it).
    on_new_study: Callable[[Session, InstanceHeader, datetime], None] | None = None


def receive_instance(
    deps: ReceiveDeps,
    *,
    dataset: bytes,
    transfer_syntax_uid: str,
    requested_sop_class_uid: str,
    requested_sop_instance_uid: str,
    calling_ae_title: str,
    retrieved: bool = False,
) -> IndexResult:
    """Store one received dataset durably and index it.

    ``retrieved``: it came because this node retrieved it (priors): its study
    queues no jobs of its own.

    Raises
    ------
    StoreRejected
        With the DIMSE status and comment to answer; nothing was indexed.
    """
    header = read_instance_header(dataset, transfer_syntax_uid)
    if header.sop_class_uid != requested_sop_class_uid:
        raise UidMismatch(
            f"SOP Class UID {header.sop_class_uid} in dataset, {requested_sop_class_uid} in request"
        )
    if header.sop_instance_uid != requested_sop_instance_uid:
        raise UidMismatch(
            f"SOP Instance UID {header.sop_instance_uid} in dataset, "
            f"{requested_sop_instance_uid} in request"
        )
    for name, uid in (
        ("SOP Instance UID", header.sop_instance_uid),
        ("Study Instance UID", header.study_instance_uid),
        ("Series Instance UID", header.series_instance_uid),
    ):
        if not is_safe_uid(uid):
            raise InvalidUid(f"invalid {name}: {uid[:40]}")

    meta = file_meta_bytes(
        sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        source_ae_title=calling_ae_title,
    )
    spool = deps.spool
    try:
        wanted = deps.min_free_bytes + len(meta) + len(dataset)
        free = spool.free_bytes(above=wanted)
        if free < wanted and deps.make_room is not None:
            deps.make_room(wanted)
            free = spool.free_bytes()
        if free < wanted:
            raise OutOfResources(
                f"disk reserve reached: {free // 2**20} MiB free, "
                f"{deps.min_free_bytes // 2**20} MiB kept"
            )
        final = spool.instance_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        staged, size = spool.stage((meta, dataset), header.sop_instance_uid)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise OutOfResources(f"disk full: {exc.strerror}") from exc
        raise OutOfResources(f"cannot write instance: {exc.strerror}") from exc

    # The file goes in place (its folder fsynced) on this thread, before its row is
    # written: every store's folder fsync runs beside the others' instead of in the
    # group commit's one batch at a time. It never overwrites a file a committed row
    # points to (see Spool.publish): if the index refuses it, or keeps the instance
    # it has, the file is removed again and the store is exactly as it was; a crash
    # before the commit leaves a file without a row, which start-up moves to orphans/.
    try:
        published = spool.publish(staged, final)  # on failure, nothing is left of it
    except OSError as exc:
        raise OutOfResources(f"cannot write instance: {exc.strerror}") from exc
    replace = deps.on_duplicate is DuplicatePolicy.REPLACE

    def index(session: Session) -> IndexResult:
        # Database work only: the group commit may run it again, alone, after a
        # batch it was in rolled back.
        placement = locate(session, header)
        if placement.instance_id is not None and not replace:
            return IndexResult(outcome=IndexOutcome.KEPT_EXISTING)
        stored = StoredInstance(
            header=header,
            path=published,
            size_bytes=size,
            calling_ae_title=calling_ae_title,
            received_at=deps.clock(),
            retrieved=retrieved,
        )
        result = index_instance(session, stored, placement, replace=replace)
        if result.study_created and not retrieved and deps.on_new_study is not None:
            deps.on_new_study(session, header, stored.received_at)
        return result

    try:
        # Concurrent stores share one transaction and one commit (storage.group_commit).
        result = group_of(deps.sessions).run(index, key=header.study_instance_uid)
    except StudyConflict as exc:
        _undo(spool, published)
        raise SeriesInOtherStudy(exc) from None
    except OSError as exc:
        _undo(spool, published)
        raise OutOfResources(f"cannot write instance: {exc.strerror}") from exc
    except SQLAlchemyError as exc:
        _undo(spool, published)
        raise OutOfResources(
            f"index unavailable: {type(getattr(exc, 'orig', None) or exc).__name__}",
            StoreStatus.OUT_OF_RESOURCES_INDEX,
        ) from exc
    except BaseException:
        _undo(spool, published)
        raise
    if result.outcome is IndexOutcome.KEPT_EXISTING:
        _undo(spool, published)  # the instance already held stays; this copy goes
    if result.previous_path is not None:
        spool.remove(result.previous_path)
    return dataclasses.replace(result, header=header)


def _undo(spool: Spool, published: Path) -> None:
    """Remove the file of a store that did not index it; no committed row points to it."""
    try:
        spool.remove(published)
    except OSError:
        # Start-up reconciliation finds it (a file without a row).
        logger.exception("cannot remove %s after a failed store", published)
