"""Every user-facing error class. The ``deepfake`` command prints any ``DeepfakeError`` as one
``deepfake: error: ...`` line (exit status 2) instead of a traceback; the message names the file, row or key.

This module imports nothing heavy, so the command's entry point can catch these before torch is loaded.
"""

from __future__ import annotations


class DeepfakeError(Exception):
    """Base class: bad input that the user can fix; the message says what and where."""


class DataError(DeepfakeError, ValueError):
    """Bad dataset input: a CSV, a path, an image or a ``data.*`` setting that cannot be used as it is."""


class BadImageError(DeepfakeError, OSError):
    """An image file that cannot be decoded; the message names the file."""


class PretrainedWeightsUnavailable(DeepfakeError, RuntimeError):
    """ImageNet weights could not be fetched (no internet, no cache) and no local file was given."""


class ExportError(DeepfakeError, ValueError):
    """An export directory that cannot be loaded; the message names the file and what is wrong."""


class SweepConfigError(DeepfakeError, ValueError):
    """A sweep file that cannot be run; the message names the key."""


class ConfigError(DeepfakeError, ValueError):
    """Settings that cannot be combined, e.g. a command-line ``--model.backbone`` that contradicts the checkpoint."""


class CheckpointError(DeepfakeError, ValueError):
    """A model file that is refused: not a checkpoint, or holding more than plain values and tensors (a pickle that
    would run code). The message names the file and what was refused."""
