"""``[export]`` of config.toml: the key and rules of the de-identified export.

::

    [export]
    secret_file = "/etc/ainode/export-secret"   # 32+ random bytes, chmod 600
    # allow_burned_in = false      # Secondary Capture, ultrasound, Burned In Annotation = YES
    # keep_private_creators = []   # private blocks kept, by Private Creator

The secret keys the patient pseudonyms, the new UIDs and each patient's date
shift: the same secret gives the same pseudonym in every export, and nobody
without it can reverse them. Make one with
``head -c 32 /dev/urandom > export-secret && chmod 600 export-secret``.
"""

from __future__ import annotations

import stat
from pathlib import Path

from core.config import ExportConfig
from core.config_rules import existing_file
from core.tomltable import Table

__all__ = ["MIN_SECRET_BYTES", "parse_export"]

MIN_SECRET_BYTES = 16


def parse_export(table: Table, base: Path) -> ExportConfig:
    secret = existing_file(table, "secret_file", base, required=False)
    if secret is not None:
        mode = secret.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise table.fail(
                "secret_file", f"{secret} must be readable by its owner only (chmod 600)"
            )
        try:
            size = len(secret.read_bytes())
        except OSError as exc:
            raise table.fail("secret_file", f"{secret} cannot be read: {exc.strerror}") from None
        if size < MIN_SECRET_BYTES:
            raise table.fail(
                "secret_file", f"{secret} must hold at least {MIN_SECRET_BYTES} bytes (has {size})"
            )
    cfg = ExportConfig(
        secret_file=secret,
        allow_burned_in=table.boolean("allow_burned_in", False),
        keep_private_creators=table.strings("keep_private_creators"),
    )
    table.finish()
    return cfg
