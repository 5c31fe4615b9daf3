"""Training recipes, and every list of choices the scripts offer, in one module without TensorFlow.

``TrainConfig`` is one training run's recipe; ``TrainConfig.for_arch`` starts from an
architecture's recipe (:data:`ARCHITECTURES`). Each kind of choice is a
:class:`~deepfake_detector.registry.Registry` whose entries hold their name, help text and
implementation (a dotted path, imported on first use), so a new choice is the function that
implements it and one ``register`` call here, beside the others of its kind; the scripts' argparse
choices, defaults and help texts, the checks of a config and the code that runs it all read the
same entry. Nothing here imports TensorFlow, so ``--help`` stays instant.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields

from deepfake_detector.registry import Entry, Registry


@dataclass(frozen=True, kw_only=True)
class Architecture(Entry):
    """A network that ``train.py --arch`` builds, and its recipe.

    Its implementation is ``build(image_size, **options)``, returning an uncompiled Keras model
    (``networks.build_model``); a pretrained one also takes ``pretrained``.
    """

    pretrained: bool  # starts from ImageNet weights (deepfake_detector.pretrained)
    recipe: dict = field(default_factory=dict)  # TrainConfig values that differ from its defaults


#: One fine-tuning recipe for both pretrained backbones.
FINE_TUNING = dict(
    epochs=15,
    learning_rate=6e-4,
    optimizer="adamw",
    weight_decay=0.02,
    schedule="cosine",
    warmup_epochs=1,
    early_stopping_patience=0,
    label_smoothing=0.05,
    augment="full",
    flip_average=True,
    ema_momentum=0.998,
    framing="face",
)

#: ``TrainConfig.arch``: the networks ``train.py --arch`` builds.
ARCHITECTURES: Registry[Architecture] = Registry("architecture", Architecture)
ARCHITECTURES.register(
    "seed",
    help="the original 4-block CNN and recipe",
    pretrained=False,
    implementation="deepfake_detector.networks:build_seed_cnn",
)
# The shipped model: 160 px input (the 128 px faces upscaled), blocks 0-3 frozen, which
# makes its CPU step about as cheap as a fully trained 128 px step.
ARCHITECTURES.register(
    "mobilenet_v2",
    help="the recipe of the shipped model",
    pretrained=True,
    recipe={**FINE_TUNING, "image_size": 160, "frozen_blocks": 4},
    implementation="deepfake_detector.networks:build_mobilenet_v2",
)
ARCHITECTURES.register(
    "efficientnet_lite0",
    help="the same fine-tuning recipe on ImageNet EfficientNet-Lite0",
    pretrained=True,
    recipe=FINE_TUNING,
    implementation="deepfake_detector.networks:build_efficientnet_lite0",
)
#: The architectures that start from ImageNet weights; also their backbone sub-models' names.
PRETRAINED_ARCHITECTURES = tuple(name for name, architecture in ARCHITECTURES.items() if architecture.pretrained)


@dataclass(frozen=True, kw_only=True)
class Augmentation(Entry):
    """Label-preserving changes a shared photo goes through.

    Every image is flipped (half the time) and shifted by up to 1/16 of its side; the rest
    happen with the given probabilities (``augment.augment_image``, the implementation). Each
    image is drawn independently, except that a ``paired`` policy changes a real face and its
    self-blend alike (one draw for both, as SBI's training does), so the two still differ only
    where the blend does. A policy without an implementation (``none``) leaves images as they are.
    """

    rescale_probability: float = 0.0  # downscale to 50-100% and back up, as resizing for the web does
    blur_probability: float = 0.0  # Gaussian blur, sigma 0.3-1.5
    jpeg_probability: float = 0.0  # JPEG recompression
    jpeg_quality: tuple[int, int] = (30, 96)  # its quality range, [low, high)
    color_probability: float = 0.0  # brightness, contrast, saturation and hue jitter
    paired: bool = False  # a real face and its self-blend share one draw

    @property
    def changes_images(self) -> bool:
        """Whether the policy does anything (``none`` does not)."""
        return self.implementation is not None

    def augmenter(self):
        """``augment(image, seed)``: one augmented copy of a uint8 image tensor, reproducible from
        ``seed`` (two int64), by this policy. Get it before tracing: the first call imports TensorFlow code."""
        return functools.partial(self.load(), policy=self)


AUGMENT = "deepfake_detector.augment:augment_image"
#: ``TrainConfig.augment``. "full" is the shipped model's; "light" keeps the seams a swap leaves
#: sharp (better clean accuracy, far less robust to blur and resizing: models/README.md).
AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation", Augmentation)
NO_AUGMENTATION = AUGMENTATIONS.register("none", help="no augmentation").name
AUGMENTATIONS.register(
    "full",
    help="flip, shift, rescale, blur, JPEG",
    implementation=AUGMENT,
    rescale_probability=0.25,
    blur_probability=0.2,
    jpeg_probability=0.5,
    jpeg_quality=(30, 96),
)
AUGMENTATIONS.register(
    "light", help="flip, shift, JPEG", implementation=AUGMENT, jpeg_probability=0.4, jpeg_quality=(50, 96)
)
# Self-blended training (``fakes``): "full" plus SBI's colour jitter, on real and fake alike.
AUGMENTATIONS.register(
    "selfblend",
    help="full plus colour jitter",
    implementation=AUGMENT,
    rescale_probability=0.25,
    blur_probability=0.2,
    jpeg_probability=0.5,
    jpeg_quality=(30, 96),
    color_probability=0.5,
)
# SBI's own (its get_transforms): no blur or rescaling after the blend, JPEG q40-100 half
# the time, colour a third of the time per kind; a face and its blend changed alike.
AUGMENTATIONS.register(
    "sbi",
    help="SBI's: flip, shift, colour, JPEG; a face and its blend alike",
    implementation=AUGMENT,
    jpeg_probability=0.5,
    jpeg_quality=(40, 101),
    color_probability=0.5,
    paired=True,
)
#: What every recipe trains self-blended fakes with (``TrainConfig.for_arch``).
SELF_BLEND_AUGMENTATION = "selfblend"


@dataclass(frozen=True, kw_only=True)
class Fakes(Entry):
    """What the fake class trains on. Its implementation is ``sources(splits, config)``, returning
    the train and validation sources, the landmarks to self-blend the train source's real images
    with (or None) and the class weights (or None) (``fake_sources.py``)."""

    dataset: bool  # the dataset's own fakes are trained on
    blended: bool  # real faces are self-blended into fakes


#: ``TrainConfig.fakes``: what the fake class is trained on.
FAKES: Registry[Fakes] = Registry("fakes", Fakes)
DATASET_FAKES = FAKES.register(
    "dataset",
    help="its own",
    dataset=True,
    blended=False,
    implementation="deepfake_detector.fake_sources:dataset_fakes",
).name
FAKES.register(
    "self-blended",
    help="each real face blended with an altered copy of itself, the dataset's fakes "
    "unused: Test then measures fakes never seen",
    dataset=False,
    blended=True,
    implementation="deepfake_detector.fake_sources:self_blended_fakes",
)
FAKES.register(
    "both",
    help="the dataset's fakes and self-blends",
    dataset=True,
    blended=True,
    implementation="deepfake_detector.fake_sources:dataset_and_blended_fakes",
)
#: The name of the self-blended source in a multi-source run's ``--mix`` (``mixing.py``).
SELF_BLENDED_SOURCE = "self-blended"

#: ``TrainConfig.framing``: how a training image becomes a model input, decided when its split is cached.
#: Each implementation is ``frame(path, image_size) -> (uint8 image, whether a face was found)``
#: (``cache.open_split``).
FRAMINGS: Registry[Entry] = Registry("framing")
FRAMINGS.register(
    "whole", help="the whole image, as the original tutorial did", implementation="deepfake_detector.cache:whole_image"
)
FRAMINGS.register(
    "face",
    help="its largest face, found and framed as the page frames faces (an image without one is used whole)",
    implementation="deepfake_detector.cache:largest_face",
)


@dataclass(frozen=True, kw_only=True)
class Strategy(Entry):
    """A way to spread training over devices and machines.

    Its implementation is ``make(cluster_timeout)``, returning a ``tf.distribute.Strategy``
    (``distribute.make_strategy``).
    """

    tf_name: str  # what TensorFlow calls it, for the logs
    cluster: bool = False  # one process per machine, described by TF_CONFIG


#: ``TrainConfig.distribute``: how many devices and machines train.
STRATEGIES: Registry[Strategy] = Registry("distribution", Strategy)
STRATEGIES.register(
    "none", help="one device", tf_name="default strategy", implementation="deepfake_detector.distribute:one_device"
)
STRATEGIES.register(
    "mirrored",
    help="every GPU of this machine (or the CPU)",
    tf_name="MirroredStrategy",
    implementation="deepfake_detector.distribute:mirrored",
)
STRATEGIES.register(
    "multiworker",
    help="one process per machine, configured by TF_CONFIG",
    cluster=True,
    tf_name="MultiWorkerMirroredStrategy",
    implementation="deepfake_detector.distribute:multiworker",
)

#: ``TrainConfig.threshold_rule``: how the decision threshold is chosen on Validation. Each
#: implementation is ``rule(y_true, fake_probability, sample_weight) -> threshold``
#: (``metrics.choose_threshold``).
THRESHOLD_RULES: Registry[Entry] = Registry("threshold rule")
THRESHOLD_RULES.register(
    "eer",
    help="where the false positive and false negative rates are equal",
    implementation="deepfake_detector.metrics:equal_error_threshold",
)
THRESHOLD_RULES.register(
    "balanced_accuracy",
    help="the score cut with the highest balanced accuracy",
    implementation="deepfake_detector.metrics:balanced_accuracy_threshold",
)

#: ``TrainConfig.optimizer``. Each implementation is ``make(learning_rate, weight_decay, **ema)``,
#: returning a Keras optimizer (``model.DeepfakeDetectorModel.compile_model``).
OPTIMIZERS: Registry[Entry] = Registry("optimizer")
OPTIMIZERS.register(
    "adam", help="Adam, the original recipe's (no weight decay)", implementation="deepfake_detector.optim:adam"
)
OPTIMIZERS.register(
    "adamw", help="AdamW: Adam with decoupled weight decay", implementation="deepfake_detector.optim:adamw"
)

#: ``TrainConfig.schedule``: how the learning rate moves. Each implementation is an
#: ``optim.Schedule`` class: the rate a run compiles with, and the callbacks that change it.
SCHEDULES: Registry[Entry] = Registry("schedule")
SCHEDULES.register(
    "plateau",
    help="constant, cut tenfold after 5 epochs without a better val_loss (the original)",
    implementation="deepfake_detector.optim:Plateau",
)
SCHEDULES.register(
    "cosine",
    help="linear warm-up over warmup_epochs, then cosine decay to 0",
    implementation="deepfake_detector.optim:WarmupCosine",
)

#: ``TrainConfig.verbose``: what Keras prints while it fits.
VERBOSITY = {0: "silent", 1: "a progress bar", 2: "one line per epoch"}

#: How a loaded model runs its network (``detector.Detector``). Each implementation is a scorer
#: class: ``Scorer(model, metadata, threads, model_path)``, called on a uint8 batch, returns P(fake);
#: its ``precision`` ("float32", "int8") is shown by ``/healthz``.
RUNTIMES: Registry[Entry] = Registry("runtime")
RUNTIMES.register(
    "tflite",
    help="the model converted at start-up and run by LiteRT, fastest per upload",
    implementation="deepfake_detector.tflite:TFLiteScorer",
)
RUNTIMES.register("keras", help="TensorFlow", implementation="deepfake_detector.detector:KerasScorer")
#: What ``python inference.py`` serves with; scripts that score in batches use "keras".
SERVING_RUNTIME = "tflite"

#: ``export.py --format``: what a saved model is exported as (``export.export``). Each
#: implementation is ``write(model_path, output, data_dir) -> (path written, a line saying what it measured)``.
EXPORT_FORMATS: Registry[Entry] = Registry("export format")
EXPORT_FORMATS.register(
    "savedmodel",
    help="a TensorFlow SavedModel folder for TensorFlow Serving",
    implementation="deepfake_detector.export:write_savedmodel",
)
EXPORT_FORMATS.register(
    "tflite", help="a folder with model.tflite", implementation="deepfake_detector.export:write_tflite"
)
EXPORT_FORMATS.register(
    "flip-averaged",
    help="a .keras model that averages each image's score with its mirror image's",
    implementation="deepfake_detector.export:write_flip_averaged",
)
EXPORT_FORMATS.register(
    "int8",
    help="the .keras model with an int8 TFLite copy for the server, kept only if its Test ROC AUC is within "
    "0.002 of the float model's on every --data-dir",
    implementation="deepfake_detector.quantize:write_int8",
)
EXPORT_FORMATS.register(
    "adopt",
    help="a .keras model of the original tutorial's code, given our metadata",
    implementation="deepfake_detector.export:write_adopted",
)


@dataclass
class TrainConfig:
    """A training recipe. The defaults are the original tutorial's (``arch='seed'``)."""

    arch: str = "seed"  # "seed": the original 4-block CNN; "mobilenet_v2" (the shipped recipe), "efficientnet_lite0"
    data_dir: str | list[str] = "data"  # a folder with Train/Validation/Test (downloaded here if empty), or several
    mix: str | None = None  # several data folders: each source's share of an epoch, "NAME=W,..." (default: equal)
    archive: str | None = None  # a Kaggle zip the user already has
    sha256: str | None = None  # checksum of the downloaded archive, when known
    output: str = "deepfake_detector_model.keras"  # the tutorial's file, in the working folder
    image_size: int = 128  # the original recipe's input side
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-4  # the original recipe; Adam
    optimizer: str = "adam"  # a name in OPTIMIZERS: "adam" (original) or "adamw"
    weight_decay: float = 0.0  # AdamW only
    schedule: str = "plateau"  # a name in SCHEDULES: "plateau", ReduceLROnPlateau x0.1/5 (original); "cosine"
    warmup_epochs: int = 0  # cosine only: linear warm-up
    early_stopping_patience: int = 10  # on val_loss, best weights restored; 0 turns it off
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0  # above 0: the saved weights are an exponential moving average of the trained ones
    augment: str = "none"  # a name in AUGMENTATIONS
    fakes: str = "dataset"  # a name in FAKES: the dataset's own, self-blends of its real images only, or both
    other_faces: float = 0.0  # share of blended fakes made from another real face aligned onto the face (Face X-ray's)
    framing: str = "whole"  # a name in FRAMINGS: the whole image or its largest face, cropped when cached
    frozen_blocks: int = 0  # pretrained backbones: leading feature blocks kept at their ImageNet weights
    pretrained: bool = True  # ImageNet weights for mobilenet_v2 and efficientnet_lite0
    flip_average: bool = False  # save a model that averages each image's score with its mirror's
    threshold_rule: str = "eer"  # a name in THRESHOLD_RULES: how the decision threshold is chosen on Validation
    seed: int = 1337
    max_images_per_split: int | None = None  # for quick trials; None uses everything
    steps_per_epoch: int | None = (
        None  # cap on training steps per epoch (trials, benchmarks); Validation and Test stay whole
    )
    cache_dir: str | None = (
        None  # where each split's decoded images are cached; None: the user's cache (cache.default_cache_dir)
    )
    distribute: str = "none"  # a name in STRATEGIES: one device, every local GPU (or the CPU), or TF_CONFIG's workers
    cluster_timeout: float = 600.0  # multiworker: seconds to wait for every worker to start, then a clear error
    mixed_precision: bool = False  # mixed_float16 compute on GPUs; the output layer stays float32
    backup_dir: str | None = None  # per-epoch training state for resuming; None: .NAME.backup/ beside output
    verbose: int = 1  # Keras fit: 1 progress bar, 2 one line per epoch, 0 silent

    @classmethod
    def for_arch(cls, arch: str, **overrides) -> TrainConfig:
        """The recipe defaults for an architecture, then ``overrides`` (None values ignored)."""
        recipe = dict(arch=arch)
        if arch in ARCHITECTURES:
            recipe.update(ARCHITECTURES[arch].recipe)
        if overrides.get("fakes") not in (None, DATASET_FAKES):
            recipe.update(augment=SELF_BLEND_AUGMENTATION)  # SBI's colour jitter on top of the recipe's
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**recipe)

    @property
    def data_dirs(self) -> list[str]:
        """Every data folder of the run: one, or several for a multi-source run (``mixing.py``)."""
        return [self.data_dir] if isinstance(self.data_dir, str) else list(self.data_dir)

    @property
    def multi_source(self) -> bool:
        """Whether the run draws its epochs from sources in shares (several data folders or ``--mix``)."""
        return len(self.data_dirs) > 1 or self.mix is not None

    @property
    def data(self) -> DataConfig:
        """The data part of the recipe: how its dataset is fetched, cached and batched."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in fields(DataConfig)})


@dataclass(frozen=True)
class DataConfig:
    """How a dataset's images become batches: the part of a recipe that ``DatasetHandler``, the
    cache and the input pipeline read (``TrainConfig.data``; the defaults are its defaults).

    The dataset is fetched with ``archive`` and ``sha256`` (``data.DatasetHandler``); each split is
    decoded once at ``image_size``, framed by ``framing``, ``max_images_per_split`` of it drawn by
    ``seed``, into ``cache_dir`` (``cache.open_split``); then streamed in batches of ``batch_size``,
    shuffled by ``seed``, training batches augmented by ``augment``, ``other_faces`` of their
    blended fakes made from another face (``pipeline.make_dataset``, ``mixing.make_mixed_dataset``).
    """

    image_size: int = TrainConfig.image_size
    batch_size: int = TrainConfig.batch_size
    framing: str = TrainConfig.framing
    max_images_per_split: int | None = TrainConfig.max_images_per_split
    seed: int = TrainConfig.seed
    augment: str = TrainConfig.augment
    other_faces: float = TrainConfig.other_faces
    cache_dir: str | None = TrainConfig.cache_dir  # None: the user's cache folder, one per data folder
    archive: str | None = TrainConfig.archive
    sha256: str | None = TrainConfig.sha256
