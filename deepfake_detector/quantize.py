"""Int8 serving: a post-training quantized TFLite copy of a model, kept only where it scores as the float one does.

``python export.py --format int8 --model M.keras --data-dir A --data-dir B --output M.int8.keras``
converts the network with TFLite's post-training quantization (int8 weights and activations,
XNNPACK's int8 kernels), calibrated on Validation images of every ``--data-dir`` (framed as the
model was trained), then scores every Test split with both the float and the int8 flatbuffer. The
int8 copy is stored inside the new ``.keras`` file (:data:`INT8_ENTRY`) only when its ROC AUC is
within :data:`MAX_AUC_DROP` of the float model's on every Test split; the figures go into the
metadata (``int8``) either way, and ``/healthz`` shows them. The web server's TFLite runtime
(:class:`~deepfake_detector.tflite.TFLiteScorer`) serves the int8 copy when the file has one, and
otherwise the float conversion, saying why in its log.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from pathlib import Path

import numpy as np

from deepfake_detector.data import DatasetHandler
from deepfake_detector.errors import ExportError
from deepfake_detector.metrics import compute_metrics
from deepfake_detector.mixing import source_names
from deepfake_detector.model import load_model, save_model
from deepfake_detector.recipes import DataConfig
from deepfake_detector.tflite import INT8_ENTRY, LiteModel, tflite_flatbuffer

log = logging.getLogger(__name__)

#: The most Test ROC AUC the int8 copy may lose, on any one source, to be served.
MAX_AUC_DROP = 0.002
#: Validation images the quantization ranges are calibrated on, shared alike between the sources.
CALIBRATION_IMAGES = 240


def write_int8(model_path: str | Path, output: str | Path, data_dirs: list | None = None) -> tuple[Path, str]:
    """``export.py --format int8``: the model saved again to ``output`` with its int8 copy, if it passes.

    Returns:
        The path written and a line with the figures.

    Raises:
        ExportError: no ``--data-dir``, or an ``output`` that is not a new ``.keras`` file name.
    """
    if not data_dirs:
        raise ExportError("int8 needs --data-dir: it is calibrated on Validation and checked on Test of each")
    if Path(output).suffix != ".keras" or Path(output).resolve() == Path(model_path).resolve():
        raise ExportError(f"int8 writes a new .keras file; {output} is not one")
    model, metadata = load_model(model_path)
    if metadata.int8:
        raise ExportError(f"{model_path} already went through int8 quantization; start from the float model")
    data = DataConfig(image_size=metadata.image_size, framing=metadata.framing)
    names = source_names([str(d) for d in data_dirs])
    splits = {
        name: DatasetHandler(dataset_download_dir=d, config=data).splits(("Validation", "Test"))
        for name, d in zip(names, data_dirs)
    }
    calibration = calibration_images({name: split["Validation"] for name, split in splits.items()})
    log.info("int8: calibrating on %d Validation images", len(calibration))
    float_model = LiteModel(tflite_flatbuffer(model, metadata), threads=None)
    int8_flatbuffer = tflite_flatbuffer(model, metadata, calibration=calibration)
    int8_model = LiteModel(int8_flatbuffer, threads=None)
    figures = {
        "sources": {},
        "rule": f"served only if its Test ROC AUC is within {MAX_AUC_DROP} of the float model's on every source",
    }
    for name, split in splits.items():
        test = split["Test"]
        float_auc, int8_auc = (
            compute_metrics(test.labels, scores_of(lite, test))["roc_auc"] for lite in (float_model, int8_model)
        )
        figures["sources"][name] = {"float": round(float_auc, 5), "int8": round(int8_auc, 5), "n": len(test)}
        log.info("int8: %s Test ROC AUC %.4f float, %.4f int8", name, float_auc, int8_auc)
    drops = {name: measured["float"] - measured["int8"] for name, measured in figures["sources"].items()}
    worst = max(drops, key=drops.get)
    figures.update(
        max_drop=round(drops[worst], 5),
        worst_source=worst,
        served=drops[worst] <= MAX_AUC_DROP,
        calibration_images=len(calibration),
        flatbuffer_bytes=len(int8_flatbuffer),
    )
    saved = dataclasses.replace(metadata, int8=figures)  # the same network: its name, date and versions stay
    save_model(model, saved, output)
    if figures["served"]:
        with zipfile.ZipFile(output, "a") as archive:
            archive.writestr(INT8_ENTRY, int8_flatbuffer)
    verdict = "stored: the server will use it" if figures["served"] else "not stored: the server keeps the float model"
    return Path(output), (
        f"int8 copy {verdict} (largest Test ROC AUC drop {drops[worst]:+.4f} on {worst}; rule {MAX_AUC_DROP})"
    )


def calibration_images(validations: dict, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """``count`` Validation images, shared alike between the sources and their classes, drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    per_class = max(1, count // (2 * len(validations)))
    chosen = []
    for source in validations.values():
        labels = np.asarray(source.labels).ravel()
        for target in (0, 1):
            positions = np.flatnonzero(labels == target)
            if len(positions):
                picked = np.sort(rng.choice(positions, min(per_class, len(positions)), replace=False))
                chosen.append(source.read(picked))
    return np.concatenate(chosen)


def scores_of(lite: LiteModel, source, chunk: int = 256) -> np.ndarray:
    """P(fake) of every image of a split's cache, in order."""
    return np.concatenate(
        [lite(source.read(np.arange(i, min(i + chunk, len(source))))) for i in range(0, len(source), chunk)]
    )
