"""Where in a face the evidence for its label is: Grad-CAM heatmaps, occlusion as a fallback.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of the last convolutional block
by the gradient of the score: for the pretrained detectors that is the backbone sub-model
(``mobilenet_v2`` or ``efficientnet_lite0``, 1280 channels at 1/32 of the input side); for the seed CNN its last
``Conv2D``. The score is the logit for the image's own label (fake, or real), so the map
shows what made the model say what it said. A model with no convolution, or whose layers
are not one chain, gets occlusion sensitivity instead: grey patches, and how much the
label's probability drops under each.

A flip-averaged model (:func:`deepfake_detector.networks.flip_averaged`) is explained through
its member network: the map of the image and the mirrored map of its mirror image,
averaged, both for the label the whole model gives.

Computed only on request: one extra forward and backward pass per face.
"""

from __future__ import annotations

import base64
import io
import logging

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from deepfake_detector.model import DeepfakeDetectorModel
from deepfake_detector.networks import flip_average_member

log = logging.getLogger(__name__)

CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _is_last_conv_block(layer) -> bool:
    if isinstance(layer, CONV_TYPES):
        return True
    return isinstance(layer, keras.Model) and any(isinstance(inner, CONV_TYPES) for inner in layer.layers)


class Explainer:
    """Heatmaps for a batch of preprocessed uint8 images, for one model."""

    def __init__(self, detector_model: DeepfakeDetectorModel):
        model = detector_model.model
        self.detector_model = detector_model  # gives the label to explain, in its class order
        member = flip_average_member(model)
        self.mirrored = member is not None
        self.model = member if self.mirrored else model
        self.fake_is_one = detector_model.output_is_fake
        self.threshold = detector_model.threshold
        self.image_size = detector_model.image_size
        self.chain = [layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)]
        targets = [i for i, layer in enumerate(self.chain) if _is_last_conv_block(layer)]
        self.target = targets[-1] if targets and self._is_a_chain() else None
        self.method = "grad-cam" if self.target is not None else "occlusion"
        if self.target is not None:
            log.info("Grad-CAM on %s", self.chain[self.target].name)
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8)
        self._gradcam = tf.function(self._gradcam_views, input_signature=[spec], reduce_retracing=True)

    def _is_a_chain(self) -> bool:
        """Whether calling the top-level layers one after another reproduces the model."""
        probe = np.random.default_rng(0).integers(0, 256, (1, self.image_size, self.image_size, 3)).astype("float32")
        try:
            x = probe
            for layer in self.chain:
                x = layer(x, training=False)
            return bool(np.allclose(np.asarray(x), np.asarray(self.model(probe, training=False)), atol=1e-5))
        except Exception:  # any layer that cannot take the previous one's output
            return False

    def _fake_logit(self, features: tf.Tensor) -> tf.Tensor:
        """The model's head from the target's output to the logit of P(fake) (not squashed,
        so a confident face still has gradients)."""
        x = features
        *middle, last = self.chain[self.target + 1 :]
        for layer in middle:
            x = layer(x, training=False)
        if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.sigmoid:
            logit = (tf.matmul(x, last.kernel) + last.bias)[:, 0]
        else:
            probability = tf.clip_by_value(last(x, training=False)[:, 0], 1e-7, 1 - 1e-7)
            logit = tf.math.log(probability) - tf.math.log1p(-probability)
        return logit if self.fake_is_one else -logit

    def _gradcam_views(self, images: tf.Tensor) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        if not self.mirrored:
            return self._gradcam_graph(x)
        # Both views explain the label of the whole (averaged) model.
        fake_probability = self.detector_model.fake_probability(x)[:, 0]
        sign = tf.where(fake_probability >= self.threshold, 1.0, -1.0)
        mirror = tf.reverse(self._gradcam_graph(tf.reverse(x, axis=[2]), sign), axis=[2])
        return (self._gradcam_graph(x, sign) + mirror) / 2.0

    def _gradcam_graph(self, x: tf.Tensor, sign: tf.Tensor | None = None) -> tf.Tensor:
        """One view's map. ``sign``: +1 to explain fake, -1 real; by default this view's own label."""
        for layer in self.chain[: self.target + 1]:
            x = layer(x, training=False)
        features = x
        with tf.GradientTape() as tape:
            tape.watch(features)
            fake_logit = self._fake_logit(features)
            if sign is None:  # evidence for each image's own label: fake pushes the logit up, real down
                sign = tf.stop_gradient(tf.where(tf.sigmoid(fake_logit) >= self.threshold, 1.0, -1.0))
            target = tf.reduce_sum(sign * fake_logit)
        gradients = tape.gradient(target, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = cam / (tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True) + 1e-12)
        cam = tf.image.resize(cam, (self.image_size, self.image_size), method="bilinear")
        return tf.clip_by_value(cam[..., 0], 0.0, 1.0)

    def heatmaps(self, images: np.ndarray, scores=None) -> np.ndarray:
        """N x S x S heatmaps in 0..1 for N x S x S x 3 uint8 images.

        Args:
            images: preprocessed model inputs.
            scores: a function from such a batch to fake probabilities; only occlusion uses it.
        """
        images = np.asarray(images, dtype=np.uint8)
        if self.method == "grad-cam":
            return self._gradcam(tf.convert_to_tensor(images)).numpy().astype(np.float32)
        if scores is None:
            raise ValueError("occlusion needs the model's score function")
        return np.stack([occlusion(image, scores, self.threshold) for image in images])


def occlusion(image: np.ndarray, scores, threshold: float, grid: int = 8) -> np.ndarray:
    """How much the probability of the image's own label drops when each patch is greyed out."""
    size = image.shape[0]
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    batch = [image]
    for top, bottom in zip(edges[:-1], edges[1:]):
        for left, right in zip(edges[:-1], edges[1:]):
            occluded = image.copy()
            occluded[top:bottom, left:right] = 128
            batch.append(occluded)
    fake_probability = np.asarray(scores(np.stack(batch)), dtype=np.float64)
    sign = 1.0 if fake_probability[0] >= threshold else -1.0
    drop = np.maximum(0.0, sign * (fake_probability[0] - fake_probability[1:])).reshape(grid, grid)
    if drop.max() > 0:
        drop /= drop.max()
    heat = Image.fromarray(drop.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heatmap in the 'jet' colours blended over the image it explains."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def overlay_data_url(image: np.ndarray, heatmap: np.ndarray) -> str:
    """The overlay as a PNG ``data:`` URL (a few tens of KB at 128 px)."""
    buffer = io.BytesIO()
    overlay(image, heatmap).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
