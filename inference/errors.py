"""Exceptions of the inference package.

::

    InferenceError
     ├── PermanentJobError        retrying cannot help: the job is dead-lettered at once
     │    ├── InconsistentSeries  the series cannot make one volume
     │    └── UnsupportedInput    no loader for this kind of data
     └── ModelPackageError        a model package is broken (raised at start-up)
"""

from __future__ import annotations

__all__ = [
    "InconsistentSeries",
    "InferenceError",
    "ModelPackageError",
    "PermanentJobError",
    "UnsupportedInput",
]


class InferenceError(Exception):
    """An error of the inference package."""


class PermanentJobError(InferenceError):
    """The job fails the same way however often it runs."""


class InconsistentSeries(PermanentJobError):
    """The instances of a series do not form one consistent volume."""


class UnsupportedInput(PermanentJobError):
    """The input is of a kind the pipeline cannot read."""


class ModelPackageError(InferenceError):
    """A model package is missing a file, breaks a rule, or fails its hash."""
