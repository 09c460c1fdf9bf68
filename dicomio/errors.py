"""Errors of reading DICOM input: permanent, with a reason a person understands.

::

    core.errors.PermanentError
     └── InputError                 the input cannot be used as the pipeline needs it
          ├── InconsistentSeries    the instances do not make one consistent volume
          ├── UnsupportedInput      no loader for this kind of data (or undecodable)
          └── MissingData           a required attribute, lead or value is absent or unusable
"""

from __future__ import annotations

from core.errors import PermanentError

__all__ = ["InconsistentSeries", "InputError", "MissingData", "UnsupportedInput"]


class InputError(PermanentError):
    """The input data cannot be used as the pipeline needs it."""


class InconsistentSeries(InputError):
    """The instances of a series do not form one consistent volume."""


class UnsupportedInput(InputError):
    """The input is of a kind the pipeline cannot read."""


class MissingData(InputError):
    """A required attribute, lead or value is absent or cannot be read."""
