"""ECG leads by what they are, not by how a device spells them (DICOM CID 3001).

Devices name the same lead "Lead I", "Lead I (Einthoven)" or "I", and code it
in SCP-ECG (``5.6.3-9-1``) or ISO/IEEE 11073 MDC (``2:1``). A lead is matched
by its code when the channel has one in either scheme, else by its name with
the word "Lead" and any parenthesis dropped; both give the same key ("I",
"aVR", "V1" ...), which model packages use too.
"""

from __future__ import annotations

import re

__all__ = ["MDC", "SCPECG", "lead_key", "name_key"]

_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

#: SCP-ECG lead codes (DICOM CID 3001, coding scheme SCPECG).
SCPECG = {
    "5.6.3-9-1": "I", "5.6.3-9-2": "II", "5.6.3-9-61": "III", "5.6.3-9-62": "aVR",
    "5.6.3-9-63": "aVL", "5.6.3-9-64": "aVF", "5.6.3-9-3": "V1", "5.6.3-9-4": "V2",
    "5.6.3-9-5": "V3", "5.6.3-9-6": "V4", "5.6.3-9-7": "V5", "5.6.3-9-8": "V6",
}  # fmt: skip

#: ISO/IEEE 11073 MDC lead codes (MDC_ECG_LEAD_*: partition 2).
MDC = {
    "2:1": "I", "2:2": "II", "2:61": "III", "2:62": "aVR", "2:63": "aVL", "2:64": "aVF",
    "2:3": "V1", "2:4": "V2", "2:5": "V3", "2:6": "V4", "2:7": "V5", "2:8": "V6",
}  # fmt: skip

_BY_FOLDED = {lead.lower(): lead for lead in _LEADS}


def name_key(name: str) -> str:
    """A lead name without "Lead", parentheses or case: "Lead I (Einthoven)" -> "I"."""
    text = re.sub(r"\(.*?\)", "", name)
    text = re.sub(r"^\s*lead\s+", "", text, flags=re.IGNORECASE).strip()
    return _BY_FOLDED.get(text.lower(), text)


def lead_key(code_value: str, scheme: str, meaning: str) -> str:
    """The lead a channel records: by its SCPECG or MDC code, else by its name."""
    table = SCPECG if scheme.upper() == "SCPECG" else MDC if scheme.upper() == "MDC" else {}
    return table.get(code_value.strip()) or name_key(meaning)
