"""Logging set-up for ainode processes (only entry points call this).

``[logging] format = "text"`` (default) writes one readable line per record;
``"json"`` writes one JSON object per line (``time`` in UTC ISO 8601, ``level``,
``process``, ``logger``, ``message``, and ``exception`` with the traceback),
which journald, Loki, Elasticsearch or Splunk take without a parser. Either
way logs carry UIDs, never patient names or birth dates.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from core.config import LoggingConfig

__all__ = ["JsonFormatter", "configure_logging"]

_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _still_running(record: logging.LogRecord) -> bool:
    return "maximum number of running instances reached" not in record.getMessage()


def configure_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else logging.Formatter(_FORMAT))
    logging.basicConfig(level=cfg.level, handlers=[handler], force=True)
    # pynetdicom logs every PDU at DEBUG; apscheduler logs every run at INFO.
    logging.getLogger("pynetdicom").setLevel(cfg.pynetdicom_level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # A scheduled task still running at its next tick (a long retrieve, a slow
    # PACS) is skipped by design (max_instances=1): not worth a warning per tick.
    logging.getLogger("apscheduler.scheduler").addFilter(_still_running)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # logs each copied module
