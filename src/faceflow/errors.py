"""One typed exception per kind of failure, all under :class:`FaceflowError`.

Library calls raise these; batch drivers (CLI, eval, gallery) catch ``FaceflowError`` per item,
record the message next to the item and go on.
"""

from __future__ import annotations


class FaceflowError(Exception):
    """Base class of every error faceflow raises on purpose."""


class ImageError(FaceflowError):
    """An input could not be decoded into an image (corrupt, truncated, empty, too large, not an image)."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class ModelUnavailable(FaceflowError):
    """A model file is not in any local source and could not be fetched."""


class ChecksumMismatch(ModelUnavailable):
    """A model file was found or fetched but its sha256 is not the registered one."""


class ConfigError(FaceflowError, ValueError):
    """Options that cannot work together, or a name that is not known (detector, stage, model)."""


class DatasetError(FaceflowError):
    """An evaluation dataset is missing or not in the expected layout."""


class GalleryError(FaceflowError):
    """A gallery operation failed: unknown gallery or subject, a model mismatch, or a damaged store."""


class VideoError(FaceflowError):
    """A video could not be read or written (missing, corrupt, no video stream, undecodable frames)."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)
