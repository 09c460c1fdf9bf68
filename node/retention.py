"""Retention: delete what the node no longer needs, audited, and make room when the disk fills.

- **By age** (``[retention]``, a scheduled job of ``serve``): the instances of
  studies processed more than ``instances_days`` ago (their results
  delivered, or the study skipped or dead-lettered — storage.retention), and
  result objects written more than ``results_days`` ago and no longer waiting
  for delivery. A study with a waiting job or a pending delivery is never
  deleted.
- **Under disk pressure** (``evict_when_full``): when free space falls below
  1.25 x ``[storage] min_free_mb`` (the scheduled check) or below the reserve
  itself (a C-STORE, which asks :class:`RoomMaker` before refusing), the
  oldest processed studies are evicted first, whatever their age; C-STOREs are
  refused with 0xA700 only when nothing is left to evict.
- **By an admin** (``ainode purge --study UID``): a wrong patient, an
  objection. Waiting jobs and pending deliveries of that study are
  dead-lettered first, so nothing of it is analysed or sent afterwards.

Every purge is a DICOM Study Deleted message in the audit trail; the study's
rows stay in the index, marked purged with the reason. Files are deleted
after the rows are committed: a crash in between leaves files without rows,
which start-up reconciliation moves to ``orphans/``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.clock import utc_now
from core.config import NodeConfig
from node.audit import Auditor
from storage import retention
from storage.retention import PurgedStudy
from storage.spool import Spool

__all__ = ["RoomMaker", "purge_by_admin", "run_retention"]

logger = logging.getLogger(__name__)


def _auditor(cfg: NodeConfig) -> Auditor | None:
    return Auditor(cfg.audit, cfg.node.ae_title) if cfg.audit is not None else None


def _delete(spool: Spool, paths: Iterable[Path]) -> int:
    freed = 0
    for path in paths:
        try:
            freed += path.stat().st_size
            spool.remove(path)
        except FileNotFoundError:
            continue
    return freed


def _finish(cfg: NodeConfig, spool: Spool, purged: PurgedStudy, *, user: str, why: str) -> int:
    """Delete the purged study's files and audit it; return the bytes freed."""
    freed = _delete(spool, purged.instance_paths) + _delete(spool, purged.result_paths)
    auditor = _auditor(cfg)
    if auditor is not None:
        auditor.study_deleted(
            study_uid=purged.study_instance_uid,
            patient_id=purged.patient_id,
            user=user,
            reason=why,
        )
    logger.info(
        "study %s purged (%s): %d instance(s), %d result(s), %.1f MB freed",
        purged.study_instance_uid,
        why,
        len(purged.instance_paths),
        len(purged.result_paths),
        freed / 1e6,
    )
    return freed


def run_retention(
    cfg: NodeConfig, sessions: sessionmaker[Session], now: datetime | None = None
) -> int:
    """Delete studies and results past their retention; return how many studies went."""
    now = now or utc_now()
    r = cfg.retention
    spool = Spool(cfg.storage.data_dir)
    purged = 0
    if r.instances_days is not None:
        cutoff = now - timedelta(days=r.instances_days)
        why = f"retention: processed more than {r.instances_days:g} days ago"
        while True:
            with sessions.begin() as s:
                due = retention.processed_studies(s, processed_before=cutoff, limit=50)
            if not due:
                break
            for study_uid, _when in due:
                with sessions.begin() as s:
                    done = retention.purge_study(s, study_uid, reason=why, now=now)
                if done is not None:
                    _finish(cfg, spool, done, user=cfg.node.ae_title, why=why)
                    purged += 1
            if len(due) < 50:
                break
    if r.evict_when_full:  # before the reserve is reached, not when a C-STORE hits it
        RoomMaker(cfg, sessions, spool)(int(cfg.storage.min_free_mb * 2**20 * 1.25))
    if r.results_days is not None:
        with sessions.begin() as s:
            ids = retention.expired_results(s, created_before=now - timedelta(days=r.results_days))
            paths = retention.purge_results(s, ids, now=now)
        if paths:
            logger.info(
                "%d result object(s) older than %g days deleted", len(paths), r.results_days
            )
            _delete(spool, paths)
    return purged


class RoomMaker:
    """Frees disk by evicting the oldest processed studies (one eviction at a time)."""

    def __init__(self, cfg: NodeConfig, sessions: sessionmaker[Session], spool: Spool) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.spool = spool
        self._lock = threading.Lock()

    def __call__(self, free_target: int) -> bool:
        """Evict until ``free_target`` bytes are free; False if nothing was left to evict."""
        if not self.cfg.retention.evict_when_full:
            return self.spool.free_bytes() >= free_target
        why = "disk full: evicted, oldest processed first"
        with self._lock:  # concurrent C-STOREs wait for one eviction, then re-check
            skipped: set[str] = set()
            while self.spool.free_bytes() < free_target:
                with self.sessions.begin() as s:
                    oldest = retention.processed_studies(s, processed_before=None, limit=20)
                candidates = [uid for uid, _when in oldest if uid not in skipped]
                if not candidates:
                    logger.error(
                        "disk nearly full (%.0f MB free, %.0f MB wanted) and no processed "
                        "study left to evict",
                        self.spool.free_bytes() / 1e6,
                        free_target / 1e6,
                    )
                    return False
                with self.sessions.begin() as s:
                    done = retention.purge_study(s, candidates[0], reason=why, now=utc_now())
                if done is None:  # became busy meanwhile
                    skipped.add(candidates[0])
                    continue
                _finish(self.cfg, self.spool, done, user=self.cfg.node.ae_title, why=why)
        return True


def purge_by_admin(
    cfg: NodeConfig, sessions: sessionmaker[Session], study_uid: str, *, user: str, reason: str
) -> PurgedStudy | None:
    """Delete one study now, whatever its state; None if it is not in the index (or purged)."""
    why = f"purged by {user}: {reason}"
    with sessions.begin() as s:
        done = retention.purge_study(s, study_uid, reason=why, now=utc_now(), force=True)
    if done is not None:
        _finish(cfg, Spool(cfg.storage.data_dir), done, user=user, why=why)
        auditor = _auditor(cfg)
        if auditor is not None:
            auditor.restricted(user=user, action="purge study", detail=f"{study_uid}: {reason}")
    return done
