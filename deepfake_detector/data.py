"""The dataset: a folder with ``Train/``, ``Validation/`` and ``Test/``, each holding ``Real/`` and ``Fake/``.

:func:`find_dataset_root` finds it under a folder; :class:`DatasetHandler` (the original
tutorial's class, with its constructor and methods) finds or fetches it and serves its splits.
The tutorial downloaded the Kaggle archive, unzipped it and read each split with
``image_dataset_from_directory``; here each step is done the way a 190,000-image archive needs:

* ``download_dataset``: TLS-verified, resumable, with an optional SHA-256
  (:func:`deepfake_detector.download.download`), and only when no dataset is there already;
* ``unzip_dataset``: extraction that refuses members outside the folder, renamed into place
  when complete (:func:`deepfake_detector.download.extract`);
* ``load_split_data``: each split decoded once by the one preprocessing path into an on-disk
  cache (:mod:`deepfake_detector.cache`) and streamed from it (:func:`pipeline.make_dataset`),
  so memory stays flat in dataset size. Labels are real=0, fake=1
  (:data:`deepfake_detector.labels.TRAINING_CLASS_ORDER`), not the alphabetical order
  ``image_dataset_from_directory`` gives (Fake=0, Real=1).

Importing this module does not import TensorFlow (``evaluate.py`` checks its input first).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from deepfake_detector import cache, labels
from deepfake_detector.download import check_sha256, download, extract
from deepfake_detector.errors import DatasetError
from deepfake_detector.recipes import DataConfig

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

KAGGLE_URL = "https://www.kaggle.com/api/v1/datasets/download/manjilkarki/deepfake-and-real-images"
SPLITS = ("Train", "Validation", "Test")
#: The tutorial's name for the downloaded archive.
ARCHIVE_NAME = "dataset.zip"
#: Where ``unzip_dataset`` extracts, inside the download folder.
EXTRACTED = "extracted"
#: What the fakes of each data set we know are, by its folder's name: what a model measured on
#: it can claim to catch (the page and ``/healthz`` list them; ``ModelMetadata.measured_on``).
DATASET_KINDS = {
    "lfw-faceswap": "face swaps in photos (LFW faces, the FaceSwap tool)",
    "dfdc-faces": "face swaps in video frames (Deepfake Detection Challenge)",
    "gan-faces": "GAN-generated faces (StyleGAN family, generated.photos style)",
    "Dataset": "face swaps in photos (OpenForensics, the Kaggle deepfake-and-real-images archive)",
}


def dataset_kind(name: str) -> str:
    """What the fakes of the data set in folder ``name`` are, in words."""
    return DATASET_KINDS.get(name, f"the fakes of the data set {name!r}")


def find_dataset_root(directory: str | Path, splits: tuple[str, ...] = SPLITS) -> Path:
    """The folder under ``directory`` that holds the ``splits`` folders (``Train/``, ``Validation/`` and ``Test/``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder")
    # Here, one level down, and two (an archive extracted to ``extracted/`` holds ``Dataset/``).
    candidates, level = [directory], [directory]
    for _ in range(2):
        level = [child for folder in level for child in _subfolders(folder)]
        level.sort(key=lambda p: p.name != "Dataset")  # ``Dataset/`` first, then by name
        candidates += level
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in splits):
            return candidate
    best = max(candidates, key=lambda c: sum((c / split).is_dir() for split in splits))
    found = [split for split in splits if (best / split).is_dir()]
    missing = ", ".join(f"{split}/" for split in splits if split not in found)
    where = (
        f"{best} has {', '.join(f'{split}/' for split in found)} but no {missing}"
        if found
        else (f"{directory}: no {missing} folders")
    )
    raise DatasetError(f"{where} (looked in {directory} and two levels down)")


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(child for child in folder.iterdir() if child.is_dir())
    except OSError:  # unreadable folder: nothing to find there
        return []


class DatasetHandler:
    """Finds or fetches a dataset with ``Train/``, ``Validation/`` and ``Test/`` (each with
    ``Real/`` and ``Fake/``) and serves its splits.

    The first seven arguments are the tutorial's (with defaults): the archive at
    ``dataset_url`` is downloaded into ``dataset_download_dir`` as ``dataset_file`` and
    extracted there; ``dataset_dir`` is the folder holding the three split folders, named
    ``train_dir``, ``val_dir`` and ``test_dir``. When ``dataset_dir`` is None or missing, the
    split folders are looked for in ``dataset_download_dir`` and two levels down (an archive
    extracted to ``extracted/`` holds ``Dataset/``). ``config`` is ours: the data part of a recipe
    (:class:`~deepfake_detector.recipes.DataConfig`: an archive already downloaded and its
    checksum, the input and batch sizes, the cache folder, the framing, a per-split image limit
    for trials, the seed, the training augmentation); by default the tutorial's.
    """

    def __init__(
        self,
        dataset_url: str = KAGGLE_URL,
        dataset_download_dir: str | Path = "data",
        dataset_file: str = ARCHIVE_NAME,
        dataset_dir: str | Path | None = None,
        train_dir: str = "Train",
        test_dir: str = "Test",
        val_dir: str = "Validation",
        *,
        config: DataConfig | None = None,
    ):
        self.dataset_url = dataset_url
        self.dataset_download_dir = Path(dataset_download_dir)
        self.dataset_file = dataset_file
        self.dataset_dir = Path(dataset_dir) if dataset_dir is not None else None
        self.train_dir, self.test_dir, self.val_dir = train_dir, test_dir, val_dir
        self.config = config or DataConfig()
        self._splits: dict[str, cache.SplitCache] = {}

    # ------------------------------------------------------------------ finding and fetching

    @property
    def split_dirs(self) -> dict[str, str]:
        """Each split's folder name, by the split's role (``Train``, ``Validation``, ``Test``)."""
        return {"Train": self.train_dir, "Validation": self.val_dir, "Test": self.test_dir}

    @property
    def cache_dir(self) -> Path:
        """Where the decoded splits are cached: ``config.cache_dir``, else a folder of the user's cache
        for this data folder (:func:`deepfake_detector.cache.default_cache_dir`), never inside it."""
        if self.config.cache_dir:
            return Path(self.config.cache_dir)
        return cache.default_cache_dir(self.dataset_download_dir)

    def find(self) -> Path:
        """The folder holding the three split folders.

        Raises:
            DatasetError: none found (the message names what is missing and where).
        """
        names = tuple(self.split_dirs.values())
        if self.dataset_dir is not None and all((self.dataset_dir / name).is_dir() for name in names):
            return self.dataset_dir
        return find_dataset_root(self.dataset_download_dir, names)

    def _found(self) -> Path | None:
        try:
            return self.find()
        except DatasetError:
            return None

    @property
    def archive(self) -> Path | None:
        """The archive the user already has (``config.archive``), or None to download one."""
        return Path(self.config.archive) if self.config.archive else None

    @property
    def archive_path(self) -> Path:
        return self.archive or self.dataset_download_dir / self.dataset_file

    def download_dataset(self) -> bool:
        """Fetch the archive unless a dataset or the archive is already here; True when done.

        Downloads only into an empty folder, or one holding nothing but this handler's own
        files, so a mistyped folder full of other things is refused rather than filled.

        Raises:
            DatasetError: the folder is not empty, or the download failed (the partial file
                keeps its bytes, so running again resumes), or the checksum is wrong.
        """
        if (root := self._found()) is not None:
            log.info("dataset already at %s", root)
            return True
        archive = self.archive_path
        if archive.is_file():
            log.info("dataset file %s already exists", archive)
            if self.config.sha256:
                check_sha256(archive, self.config.sha256, remove=False)
            return True
        if self.archive is not None:
            raise DatasetError(f"{self.archive}: no such archive")
        directory = self.dataset_download_dir
        ours = {self.dataset_file, self.dataset_file + ".part", EXTRACTED, cache.CACHE_FOLDER}
        if directory.exists() and any(path.name not in ours for path in directory.iterdir()):
            self.find()  # raises, naming what the folder lacks
        log.info("downloading %s to %s", self.dataset_url, archive)
        download(self.dataset_url, archive, sha256=self.config.sha256)
        return True

    def unzip_dataset(self) -> bool:
        """Extract the archive unless a dataset is found; True when done.

        It is extracted into ``dataset_download_dir/extracted`` (refusing unsafe members), then
        the folder holding the splits is moved to ``dataset_dir`` when one was given, as the
        tutorial's ``./data/Dataset``; without one it stays under ``extracted/``.

        Raises:
            DatasetError: no archive to extract, a corrupt or unsafe archive, or one without
                the three split folders.
        """
        if (root := self._found()) is not None:
            log.info("dataset is extracted at %s", root)
            return True
        archive = self.archive_path
        if not archive.is_file():
            raise DatasetError(f"{archive}: no dataset archive to extract (download it first)")
        extracted = extract(archive, self.dataset_download_dir / EXTRACTED)
        root = find_dataset_root(extracted, tuple(self.split_dirs.values()))
        if self.dataset_dir is not None and not self.dataset_dir.exists():
            # Where the caller said (the tutorial's ./data/Dataset), once extracted whole and checked.
            self.dataset_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(root, self.dataset_dir)
            shutil.rmtree(extracted, ignore_errors=True)  # what the archive held besides the dataset
            root = self.dataset_dir
        log.info("dataset extracted to %s", root)
        return True

    # ------------------------------------------------------------------ the splits

    def splits(self, roles: tuple[str, ...] = SPLITS) -> dict[str, cache.SplitCache]:
        """The splits named in ``roles`` (``Train``, ``Validation``, ``Test``), each a
        :class:`~deepfake_detector.cache.SplitCache`, built on first use.

        Every split's folders are listed (and a missing class refused) before any is decoded.
        """
        missing = [role for role in roles if role not in self._splits]
        if missing:
            root = self.find()
            log.info("dataset: %s", root)
            listed = {role: labels.labelled_files(root / self.split_dirs[role]) for role in missing}
            for role in missing:
                split = cache.open_split(root / self.split_dirs[role], self.cache_dir, self.config, files=listed[role])
                log.info("%s: %s (cache %s)", role, split.info, split.directory)
                self._splits[role] = split
        return {role: self._splits[role] for role in roles}

    def get_image_dataset_from_directory(self, dir_name: str, training: bool | None = None) -> tf.data.Dataset:
        """One split, by its folder name, as batches of (uint8 images, labels real=0/fake=1): the
        tutorial's method, streamed from the split's cache.

        Differences from the tutorial's ``image_dataset_from_directory``: ``class_names`` is
        ``["Real", "Fake"]`` (the training order, so the sigmoid is P(fake); the tutorial's was
        alphabetical, Fake=0, so its sigmoid was P(real)); labels are float32 of shape (batch, 1);
        images are uint8 at the model's input size, resized as the page resizes them.

        ``training`` (default: for the training folder) draws a fresh shuffle every epoch and
        applies ``config.augment`` (none by default); otherwise the files keep their order.
        """
        from deepfake_detector.pipeline import make_dataset  # TensorFlow, only when a split is streamed

        roles = {name: role for role, name in self.split_dirs.items()}
        if dir_name not in roles:
            raise DatasetError(f"{dir_name!r} is not one of this dataset's split folders ({', '.join(roles)})")
        training = dir_name == self.train_dir if training is None else training
        dataset = make_dataset(self.splits()[roles[dir_name]], self.config.batch_size, training, self.config)
        # As image_dataset_from_directory's, but in the training order (Real=0, Fake=1), not alphabetical.
        dataset.class_names = [labels.FOLDER_NAMES[name] for name in labels.TRAINING_CLASS_ORDER]
        return dataset

    def load_split_data(self) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
        """``(train, test, val)``, in the tutorial's order."""
        return tuple(
            self.get_image_dataset_from_directory(name) for name in (self.train_dir, self.test_dir, self.val_dir)
        )
