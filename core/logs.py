"""Logging set-up for ainode processes (only entry points call this)."""

from __future__ import annotations

import logging
import sys

from core.config import LoggingConfig

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def configure_logging(cfg: LoggingConfig) -> None:
    logging.basicConfig(level=cfg.level, format=_FORMAT, stream=sys.stderr, force=True)
    # pynetdicom logs every PDU at DEBUG; apscheduler logs every run at INFO.
    logging.getLogger("pynetdicom").setLevel(cfg.pynetdicom_level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # logs each copied module
