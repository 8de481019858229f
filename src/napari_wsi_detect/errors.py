"""The package's own exception types.

Every error a user can cause (bad file, wrong model, empty tissue, invalid annotation)
is one of these, with a message a pathologist can act on. The CLI prints it as one line
and exits 2; the napari widget shows it as a notification.
"""

from __future__ import annotations


class WsiDetectError(Exception):
    """Base class of every error napari-wsi-detect raises on purpose."""


class SlideOpenError(WsiDetectError):
    """A slide or image file could not be opened (missing, unreadable, unsupported)."""


class SlideReadError(WsiDetectError):
    """A region of an opened slide could not be read (truncated or corrupt tiles)."""


class ModelFileError(WsiDetectError):
    """A model file is missing, not safetensors + JSON, or does not fit the architecture."""


class EmptyTissueError(WsiDetectError):
    """The tissue mask found no tissue where a detection was asked for."""


class AnnotationError(WsiDetectError):
    """An annotation file (GeoJSON, ASAP XML) is invalid."""


class CancelledError(WsiDetectError):
    """A long run was cancelled by the user."""
