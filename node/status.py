"""DIMSE statuses that ainode returns, by name (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

import enum

__all__ = ["StoreStatus"]


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses returned by the node.

    The 0xC0xx codes sit in the "Error: Cannot understand" range; which code
    says which part of the dataset was at fault, and the Error Comment (0000,0902)
    names the attribute or UID.
    """

    SUCCESS = 0x0000
    #: Free disk below the configured reserve, or the disk is full.
    OUT_OF_RESOURCES = 0xA700
    #: The index database could not record the instance (locked, I/O error).
    OUT_OF_RESOURCES_INDEX = 0xA701
    #: The dataset could not be parsed in the negotiated transfer syntax.
    CANNOT_UNDERSTAND = 0xC000
    #: A required attribute (SOP Class/Instance, Study/Series UID) is missing.
    MISSING_ATTRIBUTE = 0xC001
    #: The dataset's SOP Class or Instance UID differs from the C-STORE request.
    UID_MISMATCH = 0xC002
    #: A UID is not a valid UID (digits and dots, at most 64 characters).
    INVALID_UID = 0xC003
    #: The Series (or SOP) Instance UID is already stored under another Study Instance UID.
    SERIES_IN_OTHER_STUDY = 0xC004
    #: An unexpected error inside the node; the log has the traceback.
    UNEXPECTED_ERROR = 0xC0FF
