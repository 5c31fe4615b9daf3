"""torchvision's ImageNet MobileNetV2, read without PyTorch and converted exactly to Keras."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from deepfake_detector import networks, pretrained, weights

skimage_data = pytest.importorskip("skimage.data")

EGYPTIAN_CAT_ETC = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug
BN_EPS = 1e-5


@pytest.fixture
def empty_weights_dir(tmp_path, monkeypatch):
    """An empty folder in place of the shipped weights (the checked-path cache cleared around it)."""
    weights.verified_path.cache_clear()
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    yield tmp_path
    weights.verified_path.cache_clear()


def test_shipped_weights_are_the_files_the_code_was_checked_with():
    assert set(weights.SHA256) == {weights.RETINAFACE_ONNX, weights.MOBILENET_V2_PTH}
    for name, expected in weights.SHA256.items():
        path = weights.WEIGHTS_DIR / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, f"{name} differs from the one checked in"
        assert weights.verified_path(name) == path
    assert pretrained.torchvision_checkpoint_path() == weights.WEIGHTS_DIR / "mobilenet_v2-b0353104.pth"


def test_a_missing_or_altered_weights_file_is_refused(empty_weights_dir):
    name = weights.MOBILENET_V2_PTH
    with pytest.raises(weights.WeightsFileError, match="is missing"):
        pretrained.torchvision_checkpoint_path()
    shipped = (Path(weights.__file__).parent / name).read_bytes()
    altered = bytearray(shipped)
    altered[len(altered) // 2] ^= 1  # one bit in the middle of the tensors
    (empty_weights_dir / name).write_bytes(bytes(altered))
    with pytest.raises(weights.WeightsFileError, match="was altered"):
        pretrained.torchvision_checkpoint_path()
    (empty_weights_dir / name).write_bytes(shipped)
    assert pretrained.torchvision_checkpoint_path() == empty_weights_dir / name


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return pretrained.read_torch_legacy_checkpoint(pretrained.torchvision_checkpoint_path())


@pytest.fixture(scope="module")
def backbone(state) -> keras.Model:
    net = networks.mobilenet_v2_backbone(224)
    pretrained.load_torchvision_mobilenet_v2(net)
    return net


def test_checkpoint_has_torchvisions_shapes(state):
    expected = {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.0.1.weight": (32,),
        "features.0.1.running_var": (32,),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),  # depthwise
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    }
    for key, shape in expected.items():
        assert state[key].shape == shape, key
        assert state[key].dtype == np.float32, key
    assert state["features.0.1.num_batches_tracked"].dtype == np.int64
    for key, array in state.items():
        if key.endswith("running_var"):
            assert (array > 0).all(), key
        if array.dtype == np.float32:
            assert np.isfinite(array).all(), key
    # real trained weights, not zeros or a constant: conv filters vary, BN means are non-zero
    assert state["features.0.0.weight"].std() > 0.05
    assert np.abs(state["features.0.1.running_mean"]).max() > 0.01


@pytest.mark.slow
def test_every_backbone_tensor_is_converted(state, backbone):
    """Each features.* tensor (bar BN's counters) is used by exactly one Keras layer, with its shape."""
    used = _converted_keys(backbone, state, lambda name: name.replace("_", "."))
    wanted = {k for k in state if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    assert used == wanted


def _converted_keys(backbone, state, key_of, same_values: bool = False) -> set[str]:
    """The checkpoint keys the backbone's layers hold, each checked for size (and values)."""
    used = set()
    for layer in backbone.layers:
        if not layer.weights:
            continue
        prefix = key_of(layer.name)
        if isinstance(layer, keras.layers.BatchNormalization):
            keys = [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        else:
            keys = [f"{prefix}.weight"]
        for key, variable in zip(keys, layer.weights):
            assert int(np.prod(variable.shape)) == state[key].size, key
            if same_values:  # the same numbers, whatever the layout
                assert np.array_equal(np.sort(np.ravel(variable.numpy())), np.sort(state[key].ravel())), key
        used.update(keys)
    return used


def _imagenet_input(array: np.ndarray) -> np.ndarray:
    image = Image.fromarray(array).resize((224, 224), Image.Resampling.BILINEAR)
    unit = np.asarray(image, np.float32) / 255.0
    return (unit - np.float32(pretrained.IMAGENET_MEAN)) / np.float32(pretrained.IMAGENET_STD)


@pytest.fixture(scope="module")
def logits(state, backbone) -> np.ndarray:
    batch = np.stack([_imagenet_input(skimage_data.chelsea()), _imagenet_input(skimage_data.coffee())])
    features = np.asarray(backbone(batch, training=False)).mean(axis=(1, 2))  # global average pool
    assert features.shape == (2, 1280)
    return features @ state["classifier.1.weight"].T + state["classifier.1.bias"]


@pytest.mark.slow
def test_converted_network_sees_a_cat(logits):
    top5 = np.argsort(-logits[0])[:5]
    assert top5[0] in EGYPTIAN_CAT_ETC, top5
    assert EGYPTIAN_CAT_ETC <= set(top5.tolist())  # all three cat classes rank high
    probabilities = np.exp(logits[0] - logits[0].max())
    probabilities /= probabilities.sum()
    assert probabilities[sorted(EGYPTIAN_CAT_ETC)].sum() > 0.8


@pytest.mark.slow
def test_converted_network_sees_coffee(logits):
    top5 = np.argsort(-logits[1])[:5]
    assert top5[0] in COFFEE, top5
    assert 967 in top5  # espresso


def _windows(padded: np.ndarray, stride: int) -> np.ndarray:
    """(H, W, C) -> (H', W', C, 3, 3) sliding 3x3 windows at ``stride``."""
    return np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))[::stride, ::stride]


def _bn_relu6(x: np.ndarray, state, prefix: str) -> np.ndarray:
    gamma, beta = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
    return np.clip((x - mean) / np.sqrt(var + BN_EPS) * gamma + beta, 0.0, 6.0)


@pytest.mark.slow
def test_first_layers_match_a_numpy_reimplementation(state, backbone):
    """features.0 (conv 3x3/2) and features.2's depthwise 3x3/2, with PyTorch's symmetric padding."""
    probe = keras.Model(
        backbone.input,
        [
            backbone.get_layer("features_0_relu").output,
            backbone.get_layer("features_2_conv_0_relu").output,
            backbone.get_layer("features_2_conv_1_relu").output,
        ],
    )
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    first, expanded, depthwise = (np.asarray(t)[0] for t in probe(x, training=False))

    # features.0: Conv2d(3, 32, 3, stride 2, padding 1, bias=False) + BN + ReLU6
    padded = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    conv = np.einsum("ijcyx,ocyx->ijo", _windows(padded, 2), state["features.0.0.weight"])
    expected = _bn_relu6(conv, state, "features.0.1")
    assert expected.shape == first.shape == (112, 112, 32)
    np.testing.assert_allclose(first, expected, atol=1e-4)

    # features.2.conv.1: depthwise Conv2d(96, 96, 3, stride 2, padding 1, groups 96) + BN + ReLU6
    padded = np.pad(expanded.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    conv = np.einsum("ijcyx,cyx->ijc", _windows(padded, 2), state["features.2.conv.1.0.weight"][:, 0])
    expected = _bn_relu6(conv, state, "features.2.conv.1.1")
    assert expected.shape == depthwise.shape == (56, 56, 96)
    np.testing.assert_allclose(depthwise, expected, atol=1e-4)


# ----------------------------------------------------------------------------- EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite_state() -> dict[str, np.ndarray]:
    return pretrained.read_torch_legacy_checkpoint(pretrained.efficientnet_lite0_checkpoint_path())


@pytest.fixture(scope="module")
def lite_backbone() -> keras.Model:
    net = networks.efficientnet_lite0_backbone(224)
    pretrained.load_efficientnet_lite0(net)
    return net


@pytest.mark.slow
def test_every_lite0_tensor_is_converted(lite_state, lite_backbone):
    """Each tensor but the ImageNet classifier and BN's counters is used by one Keras layer, with its shape."""
    used = _converted_keys(lite_backbone, lite_state, pretrained.efficientnet_lite0_key, same_values=True)
    wanted = {k for k in lite_state if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")}
    assert used == wanted
    assert lite_state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert lite_backbone.output.shape[1:] == (7, 7, 1280)


@pytest.mark.slow
def test_converted_lite0_sees_a_cat_and_coffee(lite_state, lite_backbone):
    def lite_input(array):
        image = Image.fromarray(array).resize((224, 224), Image.Resampling.BILINEAR)
        return (np.asarray(image, np.float32) - pretrained.LITE_MEAN) / pretrained.LITE_STD

    batch = np.stack([lite_input(skimage_data.chelsea()), lite_input(skimage_data.coffee())])
    features = np.asarray(lite_backbone(batch, training=False)).mean(axis=(1, 2))
    logits = features @ lite_state["_fc.weight"].T + lite_state["_fc.bias"]
    cat, coffee = (np.argsort(-row)[:5] for row in logits)
    assert cat[0] in EGYPTIAN_CAT_ETC and EGYPTIAN_CAT_ETC <= set(cat.tolist()), cat
    probabilities = np.exp(logits[0] - logits[0].max())
    assert probabilities[sorted(EGYPTIAN_CAT_ETC)].sum() / probabilities.sum() > 0.8
    assert coffee[0] == 967, coffee  # espresso


@pytest.mark.slow
def test_lite0_detector_freezes_its_stem_and_first_blocks():
    from deepfake_detector.networks import backbone_of, build_model, feature_block, freeze_leading_blocks

    detector = build_model("efficientnet_lite0", 64, pretrained=False)
    assert detector.output.shape[1:] == (1,) and detector.layers[-1].activation is keras.activations.sigmoid
    backbone = backbone_of(detector)
    blocks = {feature_block(layer.name) for layer in backbone.layers if layer.weights}
    assert blocks == set(range(18))  # stem 0, blocks 1-16, head 17
    assert freeze_leading_blocks(detector, 3) > 0
    frozen = {feature_block(layer.name) for layer in backbone.layers if layer.weights and not layer.trainable}
    assert frozen == {0, 1, 2}


@pytest.mark.slow
def test_lite0_detector_round_trips_and_is_explained_on_its_backbone(tmp_path):
    from deepfake_detector.explain import Explainer
    from deepfake_detector.model import DeepfakeDetectorModel, ModelMetadata, load_model, save_model
    from deepfake_detector.networks import build_model
    from deepfake_detector.preprocessing import PreprocessingConfig

    detector = build_model("efficientnet_lite0", 64, pretrained=True)
    metadata = ModelMetadata(arch="efficientnet_lite0", preprocessing=PreprocessingConfig(image_size=64).to_dict())
    images = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 3)).astype("float32")
    before = np.asarray(detector(images, training=False))
    loaded, _ = load_model(save_model(detector, metadata, tmp_path / "lite.keras"))
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), before, atol=1e-6)
    explainer = Explainer(DeepfakeDetectorModel.load(tmp_path / "lite.keras"))
    assert explainer.method == "grad-cam" and explainer.chain[explainer.target].name == "efficientnet_lite0"
