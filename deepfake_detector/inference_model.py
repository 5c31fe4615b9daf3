"""The tutorial's ``InferenceModel``: a trained model, the app around it and its server, in one object.

``from inference import InferenceModel`` loads it (``inference.py`` stays a thin script); the
app is :func:`deepfake_detector.web.create_app`'s and the server :mod:`deepfake_detector.serving`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepfake_detector.cli import default_model
from deepfake_detector.detector import Detector
from deepfake_detector.recipes import SERVING_RUNTIME
from deepfake_detector.serving import ServerConfig, create_server
from deepfake_detector.web import RequestLimits, create_app

log = logging.getLogger(__name__)


class InferenceModel:
    """A trained model behind the upload page and JSON API: the tutorial's ``InferenceModel``.

    ``model`` is the :class:`~deepfake_detector.model.DeepfakeDetectorModel` (network and
    metadata), ``detector`` scores with it, ``app`` is the Flask app
    (:func:`deepfake_detector.web.create_app`), ``predict_image(path)`` scores one file, and
    ``run()`` serves with waitress (never Flask's debug server). With no ``model_path``, the
    model ``python train.py`` wrote in the working folder, else the shipped one
    (:func:`deepfake_detector.cli.default_model`). ``upload_store`` keeps each upload for review
    (:class:`deepfake_detector.uploads.UploadStore`); by default nothing is written.

    Raises:
        deepfake_detector.errors.ModelFileError: the model is missing or not one of ours.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        runtime: str = SERVING_RUNTIME,
        host: str = "127.0.0.1",
        port: int = 5000,
        server: ServerConfig = ServerConfig(),
        upload_store=None,
        limits: RequestLimits = RequestLimits(),
    ):
        model_path, origin = default_model("inference.py", model_path)
        self.model_path = Path(model_path)
        self.detector = Detector.from_path(self.model_path, runtime=runtime, origin=origin)  # loaded and warmed up
        self.model = self.detector.detector_model
        self.app = create_app(self.detector, limits, upload_store=upload_store)
        self.host, self.port, self.server_config = host, port, server
        log.info("serving %s, %s", self.model_path.name, origin)

    def predict_image(self, file_path: str | Path) -> tuple[float, float]:
        """``(fake_probability, percentage)`` for an image file, as the page scores it: the
        highest of its faces' scores, or the whole image's when no face is found.

        Raises:
            deepfake_detector.errors.ImageError: not a readable image.
        """
        probability = float(self.detector.predict_faces(Path(file_path)).prediction.fake_probability)
        return probability, probability * 100.0

    def run(self) -> None:
        """Serve on ``host:port`` with waitress until interrupted."""
        server = create_server(self.app, self.host, self.port, self.server_config)
        print(
            f"Serving {self.detector.name} ({self.detector.origin}) on http://{self.host}:{self.port}/ "
            f"with waitress ({self.server_config.threads} threads)",
            flush=True,
        )
        server.run()
