"""Exceptions of the node package.

::

    NodeError
     └── StoreRejected           an instance refused, with the DIMSE status to send
          ├── MalformedDataset   0xC000
          ├── MissingAttribute   0xC001
          ├── UidMismatch        0xC002
          ├── InvalidUid         0xC003
          └── OutOfResources     0xA700 / 0xA701
"""

from __future__ import annotations

from node.status import StoreStatus

__all__ = [
    "InvalidUid",
    "MalformedDataset",
    "MissingAttribute",
    "NodeError",
    "OutOfResources",
    "StoreRejected",
    "UidMismatch",
]


class NodeError(Exception):
    """An error of the DICOM node."""


class StoreRejected(NodeError):
    """The instance was not stored; ``status`` and the message go to the sender."""

    status: StoreStatus = StoreStatus.CANNOT_UNDERSTAND

    def __init__(self, message: str, status: StoreStatus | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def comment(self) -> str:
        """The Error Comment (LO: at most 64 characters)."""
        text = str(self)
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
