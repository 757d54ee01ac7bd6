"""Exception types. Every error a user can cause derives from :class:`ShamisaError`;
the CLI turns these into a one-line message and a non-zero exit, never a traceback."""

from __future__ import annotations


class ShamisaError(Exception):
    """Base class of every expected, user-facing error."""


class ImageLoadError(ShamisaError):
    """An image file could not be read or decoded (missing, corrupt, truncated, too large, ...)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelFileError(ShamisaError):
    """A weights / model / head file is missing, corrupt, of the wrong format or version."""


class DatasetError(ShamisaError):
    """A dataset folder, label file or split file is missing or malformed."""


class ConfigError(ShamisaError):
    """An invalid configuration value or combination of options."""


class TrainingError(ShamisaError):
    """Training cannot continue (for example too many non-finite losses in a row)."""
