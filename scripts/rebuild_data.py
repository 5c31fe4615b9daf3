"""Rebuild a face data set from its public sources, as ``Train|Validation|Test / Real|Fake`` with a SHA256SUMS.

Run from the repository root, one command per data set (docs/data.md says what each holds):

    python -m scripts.rebuild_data lfw-faceswap    # writes data/lfw-faceswap
    python -m scripts.rebuild_data dfdc-faces      # writes data/dfdc-faces
    python -m scripts.rebuild_data gan-faces       # writes data/gan-faces

Each source repository is fetched from GitHub as a zip of its branch (TLS verified, resumable, kept
in the user's cache), extracted safely (``deepfake_detector.download``) and processed; the output
folder appears complete or not at all. ``--branch OWNER/REPO=NAME`` picks another branch,
``--archive OWNER/REPO=ZIP`` uses a zip already downloaded, ``--sha256 OWNER/REPO=HEX`` pins one.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import random
import shutil
import sys
import tempfile
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepfake_detector.cli import run
from deepfake_detector.data import SPLITS
from deepfake_detector.download import check_sha256, download, extract
from deepfake_detector.errors import DatasetError
from deepfake_detector.files import sha256_of, staged_directory, user_cache_dir
from deepfake_detector.labels import FAKE, FOLDER_NAMES, REAL
from deepfake_detector.preprocessing import IMAGE_SUFFIXES

PROG = "rebuild_data"
log = logging.getLogger(PROG)

#: Where GitHub serves a branch as a zip: BASE/OWNER/REPO/zip/refs/heads/BRANCH.
GITHUB_ZIPS = "https://codeload.github.com"
#: Hosts a plain-http --base-url may name (a local mirror, the tests' server); anything else needs https.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
JPEG_QUALITY = 90  # both classes re-encoded alike, so the file format tells nothing about the class
REAL_FOLDER, FAKE_FOLDER = FOLDER_NAMES[REAL], FOLDER_NAMES[FAKE]
CLASS_FOLDERS = {"real": REAL_FOLDER, "fake": FAKE_FOLDER}


@dataclass(frozen=True)
class Source:
    """A public GitHub repository a data set is made from."""

    repo: str  # OWNER/NAME
    branch: str  # its default branch as far as we know; not checked from the machine this was written on
    sha256: str | None = None  # of the branch zip, where known; GitHub builds it on request, so none is pinned

    @property
    def owner(self) -> str:
        return self.repo.split("/")[0]


@dataclass(frozen=True)
class Entry:
    """One output file: where it goes, what it is made from, and (dfdc-faces) its source video."""

    split: str
    label: str  # the class folder, Real or Fake
    name: str
    source: Path
    group: str = ""


def hash_fraction(key: str) -> float:
    """``key``'s SHA-256 read as a number in [0, 1): the same on every machine and run."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) / 2**256


def split_of(key: str, bounds: tuple[tuple[float, str], ...], start: float = 0.0) -> str | None:
    """The split whose upper bound first exceeds ``key``'s hash fraction; None below ``start`` or past the last."""
    fraction = hash_fraction(key)
    if fraction < start:
        return None
    return next((split for bound, split in bounds if fraction < bound), None)


def folder(root: Path, relative: str, repo: str) -> Path:
    path = root / relative
    if not path.is_dir():
        raise DatasetError(f"the archive of {repo} has no {relative}/ folder; is it the right repository and branch?")
    return path


def images(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# ----------------------------------------------------------------------------- lfw-faceswap

LFW = Source("Rees451/faces-fake-vs-real", "master")
LFW_FOLDER = "data/processed/LFW_faceswap_split"
LFW_SPLITS = {"train": "Train", "val": "Validation", "validation": "Validation", "test": "Test"}


def lfw_entries(trees: dict[str, Path], seed: int) -> list[Entry]:
    """The repository's own split (``train|val|test / real|fake``), file names kept."""
    root = folder(trees[LFW.repo], LFW_FOLDER, LFW.repo)
    entries = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = LFW_SPLITS.get(split_dir.name.lower())
        if split is None:
            raise DatasetError(f"{LFW.repo}: {LFW_FOLDER}/{split_dir.name}/ is not train, val or test")
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = CLASS_FOLDERS.get(class_dir.name.lower())
            if label is None:
                raise DatasetError(f"{LFW.repo}: {LFW_FOLDER}/{split_dir.name}/{class_dir.name}/ is not real or fake")
            entries += [Entry(split, label, path.stem + ".jpg", path) for path in images(class_dir)]
    return entries


# ----------------------------------------------------------------------------- dfdc-faces

DFDC = Source("i-Shreyansh/DeepFake-Detection", "main")
#: Source videos are kept when their hash fraction lies in [0.08, 0.68), 60 % of them, and split
#: 80/10/10 inside that window. Read from the reference copy's sources.csv (all 10,578 of its
#: source videos, none outside); the data README says only "a hash of the source video's name".
DFDC_START = 0.08
DFDC_SPLITS = ((0.56, "Train"), (0.62, "Validation"), (0.68, "Test"))
DFDC_COLUMNS = ("videoname", "label", "original")


def dfdc_entries(trees: dict[str, Path], seed: int) -> list[Entry]:
    """Per source video (a real video and the fakes made from it): its real crop and one fake crop, seeded."""
    tree = trees[DFDC.repo]
    faces = folder(tree, "faces_224", DFDC.repo)
    if not (tree / "metadata.csv").is_file():
        raise DatasetError(f"the archive of {DFDC.repo} has no metadata.csv")
    present = {path.name for path in faces.iterdir()}
    reals: dict[str, str] = {}
    fakes: dict[str, list[str]] = defaultdict(list)
    with open(tree / "metadata.csv", newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        if missing := set(DFDC_COLUMNS) - set(reader.fieldnames or ()):
            raise DatasetError(f"{DFDC.repo}: metadata.csv has no {', '.join(sorted(missing))} column")
        for row in reader:
            crop = Path(row["videoname"].strip()).stem + ".jpg"
            if crop not in present:
                continue
            if row["label"].strip().upper() == "REAL":
                reals[row["videoname"].strip()] = crop
            elif row["label"].strip().upper() == "FAKE" and row["original"].strip():
                fakes[row["original"].strip()].append(crop)
    entries = []
    for video in sorted(reals.keys() | fakes.keys()):
        split = split_of(video, DFDC_SPLITS, start=DFDC_START)
        if split is None:
            continue
        if video in reals:
            entries.append(Entry(split, REAL_FOLDER, reals[video], faces / reals[video], video))
        if fakes[video]:
            chosen = random.Random(f"{seed}:{video}").choice(sorted(fakes[video]))
            entries.append(Entry(split, FAKE_FOLDER, chosen, faces / chosen, video))
    return entries


def dfdc_sources_csv(entries: list[Entry]) -> str:
    """``sources.csv``: every file with its split, class and source video."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["split", "class", "file", "source_video"])
    writer.writerows([entry.split, entry.label, entry.name, entry.group] for entry in entries)
    return text.getvalue()


# ----------------------------------------------------------------------------- gan-faces

ROEISHC = Source("roeishc/real-or-fake-face-image-classification", "main")
GPHOTOS = Source("hmdghoul/generated-faces", "main")
#: Split by the hash of OWNER/FILE (``roeishc/0.jpg``), 70/15/15: a real portrait and the fake
#: of the same number stay together. Checked against the reference copy: all 1,497 files agree.
GAN_SPLITS = ((0.70, "Train"), (0.85, "Validation"), (1.0, "Test"))
GPHOTOS_PER_FOLDER = 75  # from each of hmdghoul's images/SEX/ETHNICITY/ folders, a seeded sample


def gan_entries(trees: dict[str, Path], seed: int) -> list[Entry]:
    """roeishc's real and fake portraits, and a seeded sample of each hmdghoul folder as fakes."""
    entries = []
    train_data = folder(trees[ROEISHC.repo], "TrainData", ROEISHC.repo)
    for class_name, label in (("Real", REAL_FOLDER), ("Fake", FAKE_FOLDER)):
        for path in images(folder(train_data, class_name, ROEISHC.repo)):
            split = split_of(f"{ROEISHC.owner}/{path.name}", GAN_SPLITS)
            entries.append(Entry(split, label, f"roeishc_{path.stem}.jpg", path))
    generated = folder(trees[GPHOTOS.repo], "images", GPHOTOS.repo)
    for directory in sorted(p for p in generated.glob("*/*") if p.is_dir()):
        sex, ethnicity = directory.relative_to(generated).parts
        paths = images(directory)
        chosen = random.Random(f"{seed}:{sex}/{ethnicity}").sample(paths, min(GPHOTOS_PER_FOLDER, len(paths)))
        for path in sorted(chosen):
            split = split_of(f"{GPHOTOS.owner}/{path.name}", GAN_SPLITS)
            entries.append(Entry(split, FAKE_FOLDER, f"gphotos_{sex}_{ethnicity}_{path.stem}.jpg", path))
    if not any(entry.name.startswith("gphotos_") for entry in entries):
        raise DatasetError(f"the archive of {GPHOTOS.repo} has no images/SEX/ETHNICITY/ folder of images")
    return sorted(entries, key=lambda entry: (entry.label != REAL_FOLDER, entry.name))


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DataSet:
    """A data set: its sources, how their files become entries, and how each is written."""

    description: str
    sources: tuple[Source, ...]
    entries: Callable[[dict[str, Path], int], list[Entry]]
    size: int | None  # re-encoded to size x size JPEG; None keeps the original bytes
    drop_duplicates: bool  # exact duplicate files dropped (the first in entry order kept)
    reference: str  # SHA-256 of the reference copy's SHA256SUMS, which the README's figures were measured on
    differences: str  # why a rebuild may not match it byte for byte
    extra_files: Callable[[list[Entry]], dict[str, str]] = lambda entries: {}


DATASETS = {
    "lfw-faceswap": DataSet(
        "face swaps in LFW photos, 128x128 JPEG q90",
        (LFW,),
        lfw_entries,
        128,
        False,
        "f11aa11c12dd6a332907cee388cc8f6b5e8cc2e8c88dd2b8c2e5eab5b75e7978",
        "another Pillow or libjpeg version encodes the same pixels to other bytes",
    ),
    "dfdc-faces": DataSet(
        "DFDC video face crops, original bytes, split by source video",
        (DFDC,),
        dfdc_entries,
        None,
        True,
        "7c0a2c123e7f6894c99bcb47a5a484628d8b76f22a2c76f1da0686f3cf80ef31",
        "the reference copy's seeded choice of one fake per source video is not known, so other fakes may be chosen",
        lambda entries: {"sources.csv": dfdc_sources_csv(entries)},
    ),
    "gan-faces": DataSet(
        "GAN faces beside real portraits, 256x256 JPEG q90",
        (ROEISHC, GPHOTOS),
        gan_entries,
        256,
        True,
        "1920b2e53d3c771a07b882a0b511e8908a8f0c18e0b685d3afae5b34f85b0929",
        "the reference copy's seeded sample of 75 faces per hmdghoul folder is not known; Pillow or libjpeg "
        "versions may also encode differently",
    ),
}


# ----------------------------------------------------------------------------- fetching


def checked_base_url(url: str) -> str:
    """``url`` without a trailing slash, if it is https, or plain http to this machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS):
        return url.rstrip("/")
    raise DatasetError(f"--base-url {url}: use https (plain http only to {' or '.join(LOCAL_HOSTS[:2])})")


def per_repo(values: list[str], option: str, repos: list[str]) -> dict[str, str]:
    """``OWNER/REPO=VALUE`` options as a dict, each repository one of ``repos``."""
    pairs = {}
    for value in values:
        repo, equals, setting = value.partition("=")
        if not equals or repo not in repos or not setting:
            raise DatasetError(f"{option} {value}: expected OWNER/REPO=VALUE, OWNER/REPO one of {', '.join(repos)}")
        pairs[repo] = setting
    return pairs


def fetch(source: Source, branch: str, base_url: str, cache_dir: Path, sha256: str | None) -> Path:
    """The branch zip of ``source``, downloaded into ``cache_dir`` unless it is there already."""
    url = f"{base_url}/{source.repo}/zip/refs/heads/{branch}"
    destination = cache_dir / f"{source.repo.replace('/', '-')}-{branch}.zip"
    try:
        return download(url, destination, sha256=sha256)
    except DatasetError as error:
        if "HTTP 404" not in str(error):
            raise
        raise DatasetError(
            f"{error}; if {source.repo}'s branch is not {branch!r}, pass --branch {source.repo}=NAME"
        ) from None


def unpacked(target: Path) -> Path:
    """The folder holding the repository's files: GitHub's zips put them in one top folder, REPO-BRANCH/."""
    children = list(target.iterdir())
    return children[0] if len(children) == 1 and children[0].is_dir() else target


# ----------------------------------------------------------------------------- writing


def dropped_duplicates(entries: list[Entry]) -> list[Entry]:
    """``entries`` without those whose source bytes repeat an earlier one's."""
    seen, kept = set(), []
    for entry in entries:
        digest = sha256_of(entry.source)
        if digest not in seen:
            seen.add(digest)
            kept.append(entry)
    if len(kept) < len(entries):
        log.info("dropped %d exact duplicate files", len(entries) - len(kept))
    return kept


def write_entry(entry: Entry, destination: Path, size: int | None) -> None:
    """Copy the source, or decode it, convert to RGB, resize with Lanczos and save as JPEG."""
    if size is None:
        shutil.copyfile(entry.source, destination)
        return
    from PIL import Image

    try:
        with Image.open(entry.source) as image:
            resized = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{entry.source.name}: not a readable image ({error})") from error
    resized.save(destination, "JPEG", quality=JPEG_QUALITY)


def write_entries(entries: list[Entry], out: Path, size: int | None) -> None:
    from tqdm.auto import tqdm

    written = set()
    for entry in tqdm(entries, desc=f"writing {out.name}", unit="file"):
        destination = out / entry.split / entry.label / entry.name
        if destination in written:
            raise DatasetError(f"two source files would both be written as {entry.split}/{entry.label}/{entry.name}")
        written.add(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_entry(entry, destination, size)


def checksums(folder: Path) -> str:
    """``SHA256SUMS`` of the images under ``folder``: ``HEX  Split/Class/name`` lines, sorted by path."""
    paths = sorted((path.relative_to(folder).as_posix(), path) for path in folder.rglob("*.jpg"))
    return "".join(f"{sha256_of(path)}  {name}\n" for name, path in paths)


def write_dataset(dataset: DataSet, entries: list[Entry], out: Path) -> str:
    """Write ``entries`` and the data set's extra files into ``out``, which appears only when complete;
    returns the SHA256SUMS text."""
    with staged_directory(out) as scratch:
        for split in SPLITS:
            for label in (REAL_FOLDER, FAKE_FOLDER):
                (scratch / split / label).mkdir(parents=True, exist_ok=True)
        write_entries(entries, scratch, dataset.size)
        for name, text in dataset.extra_files(entries).items():
            (scratch / name).write_text(text, newline="")
        sums = checksums(scratch)
        (scratch / "SHA256SUMS").write_text(sums)
    return sums


def report(dataset: DataSet, entries: list[Entry], sums: str, out: Path) -> None:
    counts = Counter((entry.split, entry.label) for entry in entries)
    for split in SPLITS:
        log.info(
            "%-10s  %s %5d  %s %5d",
            split,
            REAL_FOLDER,
            counts[split, REAL_FOLDER],
            FAKE_FOLDER,
            counts[split, FAKE_FOLDER],
        )
    if hashlib.sha256(sums.encode()).hexdigest() == dataset.reference:
        log.info("%s: identical to the reference copy the README's figures were measured on", out)
    else:
        log.warning(
            "%s differs from the reference copy the README's figures were measured on: %s", out, dataset.differences
        )


# ----------------------------------------------------------------------------- the command


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m scripts.{PROG}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    described = (
        f"{name}: {dataset.description}, from {', '.join(s.repo for s in dataset.sources)}"
        for name, dataset in DATASETS.items()
    )
    parser.add_argument("dataset", choices=DATASETS, help="; ".join(described))
    parser.add_argument("--out", type=Path, help="folder to write; must not exist, or be empty (default: data/DATASET)")
    parser.add_argument(
        "--base-url",
        default=GITHUB_ZIPS,
        help=f"where branch zips are fetched, as BASE/OWNER/REPO/zip/refs/heads/BRANCH (default: "
        f"{GITHUB_ZIPS}); plain http only to 127.0.0.1 or localhost",
    )
    branches = ", ".join(f"{s.repo}={s.branch}" for dataset in DATASETS.values() for s in dataset.sources)
    parser.add_argument(
        "--branch",
        action="append",
        default=[],
        metavar="OWNER/REPO=BRANCH",
        help=f"another branch of a source repository (defaults, unchecked: {branches})",
    )
    parser.add_argument(
        "--archive",
        action="append",
        default=[],
        metavar="OWNER/REPO=ZIP",
        help="a source repository's zip, already downloaded, used instead of fetching it",
    )
    parser.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="OWNER/REPO=HEX",
        help="the expected SHA-256 of a source zip; any other is refused",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where downloaded zips are kept, and extracted while processing (default: the user's "
        "cache, deepfake-detector/sources)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the choices of fakes (default: 0)")
    return parser


def main(args: argparse.Namespace) -> int:
    dataset = DATASETS[args.dataset]
    out = args.out or Path("data") / args.dataset
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty; remove it, or pass another --out")
    repos = [source.repo for source in dataset.sources]
    branches = per_repo(args.branch, "--branch", repos)
    archives = per_repo(args.archive, "--archive", repos)
    hashes = per_repo(args.sha256, "--sha256", repos)
    base_url = checked_base_url(args.base_url)
    cache_dir = args.cache_dir or user_cache_dir() / "sources"
    cache_dir.mkdir(parents=True, exist_ok=True)
    zips = {}
    for source in dataset.sources:
        if source.repo in archives:
            zips[source.repo] = Path(archives[source.repo])
            if not zips[source.repo].is_file():
                raise DatasetError(f"--archive {source.repo}={zips[source.repo]}: no such file")
            if hashes.get(source.repo) or source.sha256:
                check_sha256(zips[source.repo], hashes.get(source.repo) or source.sha256, remove=False)
        else:
            branch = branches.get(source.repo, source.branch)
            zips[source.repo] = fetch(source, branch, base_url, cache_dir, hashes.get(source.repo) or source.sha256)
    with tempfile.TemporaryDirectory(prefix=".rebuild-", dir=cache_dir) as scratch:
        trees = {repo: unpacked(extract(path, Path(scratch) / repo.replace("/", "-"))) for repo, path in zips.items()}
        entries = dataset.entries(trees, args.seed)
        if dataset.drop_duplicates:
            entries = dropped_duplicates(entries)
        missing = [
            f"{s}/{c}"
            for s in SPLITS
            for c in (REAL_FOLDER, FAKE_FOLDER)
            if (s, c) not in {(entry.split, entry.label) for entry in entries}
        ]
        if missing:
            raise DatasetError(f"the sources gave no files for {', '.join(missing)}; is it the right branch?")
        try:
            sums = write_dataset(dataset, entries, out)
        except OSError as error:
            raise DatasetError(f"could not write {out}: {error}") from error
    report(dataset, entries, sums, out)
    log.info("wrote %s (%d files, SHA256SUMS)", out, len(entries))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(run(PROG, main, get_args_parser().parse_args()))
