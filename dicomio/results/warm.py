"""What a worker's first encoding would otherwise pay, paid at the worker's start.

highdicom reads its tables of the standard (which modules each IOD holds, which
attributes each module holds: three JSON files, about 0.4 s here) the first time a
SEG or Parametric Map is built, so the first job after a start waited for them
(``bench/e2e.py`` measures one job). highdicom is pinned (pyproject.toml); if a later
version moves its loaders, the warm-up logs that and the first job pays as before.
"""

from __future__ import annotations

import logging
import time

__all__ = ["TABLE_LOADERS", "warm_up"]

logger = logging.getLogger(__name__)

#: highdicom 0.28's cached loaders of its standard tables (highdicom._standard_utils).
TABLE_LOADERS = ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map")


def warm_up() -> float:
    """Load highdicom's standard tables now; the seconds it took."""
    from highdicom import _standard_utils as standard

    started = time.perf_counter()
    for name in TABLE_LOADERS:
        loader = getattr(standard, name, None)
        if loader is None:
            logger.info("highdicom has no %s: its first encoding loads what it needs", name)
            continue
        loader()
    return time.perf_counter() - started
