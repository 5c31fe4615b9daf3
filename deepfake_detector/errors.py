"""Every error a user can cause or fix, with what a script and the web app answer for it.

Each class says what went wrong in its message (one line, naming the file or option), and
carries ``exit_code`` (what ``train.py``, ``inference.py``, ``evaluate.py`` and ``export.py``
exit with after printing ``SCRIPT: message``) and ``http_status`` (what the web app answers).
Each also keeps the built-in base it has always had (``ValueError`` or ``RuntimeError``), so
code that catches those still catches them.
"""

from __future__ import annotations


class DeepfakeDetectorError(Exception):
    """A problem the user can act on; the message says what and where."""

    exit_code: int = 2  # a usage error, as argparse exits for a bad flag
    http_status: int = 400


class DatasetError(DeepfakeDetectorError, RuntimeError):
    """A dataset that is missing, incomplete, unreadable, or could not be fetched."""


class ModelFileError(DeepfakeDetectorError, RuntimeError):
    """A model file that is missing, unreadable, or whose metadata does not fit it."""

    http_status = 500  # the server's own model: never the client's fault


class WeightsFileError(DeepfakeDetectorError, RuntimeError):
    """A shipped weights file is missing, or is not the file the code was checked with."""

    http_status = 500


class TrainingSetupError(DeepfakeDetectorError, ValueError):
    """A training set-up this machine cannot run; the message says what to change."""


class ExportError(DeepfakeDetectorError, RuntimeError):
    """An export that cannot be written; the message says why."""


class PerturbationSpecError(DeepfakeDetectorError, ValueError):
    """A ``--perturb`` spec that cannot be parsed; the message says what is wrong."""


class ImageError(DeepfakeDetectorError, ValueError):
    """An input that cannot be turned into an image; the message says why, for a user."""


class UnsupportedFormatError(ImageError):
    """A real image in a format we do not decode."""

    http_status = 415


class ImageTooLargeError(ImageError):
    """An image whose decoding would cost too much memory or time."""

    http_status = 413


class UploadError(DeepfakeDetectorError, ValueError):
    """A web request without a usable file."""


class VideoError(DeepfakeDetectorError, ValueError):
    """A video that cannot be read or sampled; the message says why, for a user."""


class UnsupportedVideoError(VideoError):
    """A real video in a container or codec we do not decode."""

    http_status = 415


class VideoTooLargeError(VideoError):
    """A video over the limits (size, duration, frames, streams, decoding cost or time)."""

    http_status = 413


class ServerBusyError(DeepfakeDetectorError, RuntimeError):
    """The server's worker for this kind of request is taken; the client should try again."""

    http_status = 503
    retry_after_seconds: int = 5


class CrossSiteRequestError(DeepfakeDetectorError, ValueError):
    """A browser sent the request from another site's page (a cross-site form post)."""

    http_status = 403
