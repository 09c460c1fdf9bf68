"""Exceptions of the inference package.

::

    InferenceError
     └── ModelPackageError         a model package is broken (found at start-up)
          └── OutputMismatch       its outputs do not fit its labels (also permanent in a job)

Errors of the input data (a series that makes no volume, a missing lead) are
:mod:`dicomio.errors`; both kinds of permanent error derive from
:class:`core.errors.PermanentError`, which the retry policy dead-letters at once.
"""

from __future__ import annotations

from core.errors import PermanentError

__all__ = ["InferenceError", "ModelPackageError", "OutputMismatch"]


class InferenceError(Exception):
    """An error of the inference package."""


class ModelPackageError(InferenceError):
    """A model package is missing a file, breaks a rule, fails its hash or its trial run."""


class OutputMismatch(ModelPackageError, PermanentError):
    """A model's output does not have the shape its package declares."""
