"""One typed exception per kind of failure, all under :class:`FaceflowError`.

Library calls raise these; batch drivers (CLI, eval, gallery) catch ``FaceflowError`` per item,
record the message next to the item and go on. Only the interfaces (``faceflow.cli_base``'s table,
``faceflow.service.errors``'s) turn them into exit codes or HTTP statuses; the classes are fine enough that
users can tell the cases apart there (no face, bad usage, model missing, store down, model mismatch).
"""

from __future__ import annotations


class FaceflowError(Exception):
    """Base class of every error faceflow raises on purpose."""


class InputError(FaceflowError):
    """An input file could not be read: the message is ``"<source>: <reason>"`` (or the reason alone)."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


class ImageError(InputError):
    """An input could not be decoded into an image (corrupt, truncated, empty, too large, not an image)."""


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than the limit: refused before any pixel is decoded."""


class NoFaceFound(FaceflowError):
    """An image that had to show a face shows none (verification, enrolment)."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: no face found" if source else "no face found")


class MultipleFaces(FaceflowError):
    """An image that had to show one face shows several, and nothing said which one to take."""

    def __init__(self, count: int, source: str | None = None, hint: str = "") -> None:
        self.count = count
        self.source = source
        text = f"{count} faces found, expected one" + (f" ({hint})" if hint else "")
        super().__init__(f"{source}: {text}" if source else text)


class LowQuality(FaceflowError):
    """A face whose quality is below what the operation requires (a gallery enrolment's minimum)."""

    def __init__(self, score: float, minimum: float, source: str | None = None, weakest: str = "") -> None:
        self.score = score
        self.minimum = minimum
        self.source = source
        text = f"face quality {score:.0f} is below the minimum {minimum:g}"
        if weakest:
            text += f" (weakest: {weakest})"
        super().__init__(f"{source}: {text}" if source else text)


class PresentationAttack(FaceflowError):
    """A face the liveness stage judged a presentation attack (photo, screen) where a live one is required."""

    def __init__(self, score: float, threshold: float, model: str, source: str | None = None) -> None:
        self.score = score
        self.threshold = threshold
        text = f"face looks like a presentation attack (liveness {score:.2f} < {threshold:.2f}, {model})"
        super().__init__(f"{source}: {text}" if source else text)


class ModelUnavailable(FaceflowError):
    """A model file is not in any local source and could not be fetched."""


class ChecksumMismatch(ModelUnavailable):
    """A model file was found or fetched but its sha256 is not the registered one."""


class CheckpointError(ModelUnavailable):
    """A model checkpoint could not be read safely (unknown format, a refused global, a short file)."""


class UnsupportedOp(CheckpointError):
    """A TF.js or TFLite graph uses an operator (or an attribute value) the converter does not handle, or
    is not such a graph at all: the model cannot be made from its source."""


class StageError(FaceflowError):
    """A stage failed on one image in a way its own code did not foresee (a bug or a library's refusal):
    the message names the stage, so a batch records it against that image and goes on."""


class ConfigError(FaceflowError, ValueError):
    """Options that cannot work together, or a name that is not known (detector, stage, model)."""


class MissingExtra(ConfigError):
    """An optional part of faceflow is used whose packages are not installed (``pip install 'faceflow[x]'``)."""

    def __init__(self, feature: str, extra: str, package: str) -> None:
        self.extra = extra
        super().__init__(f"{feature} needs {package}, which is not installed: pip install 'faceflow[{extra}]'")


class DatasetError(FaceflowError):
    """An evaluation dataset is missing or not in the expected layout."""


class GalleryError(FaceflowError):
    """A gallery operation was refused: unknown gallery or subject, a name or value it cannot take."""


class NotFound(GalleryError):
    """No gallery, or no subject in a gallery, of that name (the service answers 404)."""


class AlreadyExists(GalleryError):
    """A gallery, or a subject in a gallery, of that name exists already (the service answers 409)."""


class InvalidName(GalleryError, ValueError):
    """A gallery or subject name that cannot be stored (empty, control characters, too long, ...)."""


class ModelMismatch(GalleryError):
    """Embeddings of one model met a gallery (or clustering state) of another: scores never mix models."""


class StoreUnavailable(GalleryError):
    """The gallery store cannot be reached or opened (PostgreSQL down, a file that cannot be opened)."""


class StoreDamaged(StoreUnavailable):
    """The gallery store is there but damaged (a corrupt SQLite file, a schema newer than this faceflow)."""


class VideoError(InputError):
    """A video could not be read or written (missing, corrupt, no video stream, undecodable frames)."""
