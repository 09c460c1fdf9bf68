"""Exceptions of the node package.

::

    NodeError
     └── StoreRejected           an instance refused, with the DIMSE status to send
          ├── MalformedDataset   0xC000
          ├── MissingAttribute   0xC001
          ├── UidMismatch        0xC002
          ├── InvalidUid         0xC003
          ├── SeriesInOtherStudy 0xC004
          └── OutOfResources     0xA700 / 0xA701
"""

from __future__ import annotations

from node.status import StoreStatus
from storage.index import StudyConflict

__all__ = [
    "InvalidUid",
    "MalformedDataset",
    "MissingAttribute",
    "NodeError",
    "OutOfResources",
    "SeriesInOtherStudy",
    "StoreRejected",
    "UidMismatch",
]


class NodeError(Exception):
    """An error of the DICOM node."""


class StoreRejected(NodeError):
    """The instance was not stored; ``status`` and the message go to the sender."""

    status: StoreStatus = StoreStatus.CANNOT_UNDERSTAND

    def __init__(
        self, message: str, status: StoreStatus | None = None, *, comment: str | None = None
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self._comment = comment

    @property
    def comment(self) -> str:
        """The Error Comment (LO: at most 64 characters); the log gets the whole message."""
        text = self._comment or str(self)
        return text if len(text) <= 64 else text[:61] + "..."


class MalformedDataset(StoreRejected):
    """The dataset could not be parsed."""

    status = StoreStatus.CANNOT_UNDERSTAND


class MissingAttribute(StoreRejected):
    """A required attribute is missing or empty."""

    status = StoreStatus.MISSING_ATTRIBUTE


class UidMismatch(StoreRejected):
    """The dataset disagrees with the C-STORE request."""

    status = StoreStatus.UID_MISMATCH


class InvalidUid(StoreRejected):
    """A UID cannot be a UID (or a file name)."""

    status = StoreStatus.INVALID_UID


class OutOfResources(StoreRejected):
    """No room to store the instance, or the index is unavailable."""

    status = StoreStatus.OUT_OF_RESOURCES


class SeriesInOtherStudy(StoreRejected):
    """The instance's Series (or SOP) Instance UID is already stored under another study.

    The Error Comment names both studies by the ends of their UIDs (an LO
    holds 64 characters, two UIDs up to 128); the message, logged, has them
    in full.
    """

    status = StoreStatus.SERIES_IN_OTHER_STUDY

    def __init__(self, conflict: StudyConflict) -> None:
        head = f"{conflict.what} is in study "
        middle = ", not "
        room = (64 - len(head) - len(middle)) // 2
        super().__init__(
            str(conflict),
            comment=(
                f"{head}{_tail(conflict.stored_study, room)}{middle}"
                f"{_tail(conflict.new_study, room)}"
            ),
        )


def _tail(uid: str, room: int) -> str:
    return uid if len(uid) <= room else ".." + uid[-(room - 2) :]
