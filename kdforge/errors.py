"""The errors kdforge anticipates: the command line prints these as one line, no traceback.

Anything else (a programming error, a bug in a model) keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "KdforgeError",
    "MissingDependencyError",
    "NonFiniteLossError",
]


class KdforgeError(Exception):
    """Base of the errors a user can cause and fix; the message says what and how."""


class ConfigError(KdforgeError, ValueError):
    """A recipe, an override or an argument that does not fit the schema."""


class DataError(KdforgeError, ValueError):
    """A data set, a cache or a run folder that is missing or cannot be read."""


class CheckpointError(KdforgeError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class NonFiniteLossError(KdforgeError, FloatingPointError):
    """A loss term became NaN or infinite; the run stopped before stepping on it."""


class MissingDependencyError(KdforgeError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra."""
