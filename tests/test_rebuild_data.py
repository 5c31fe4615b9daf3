"""scripts/rebuild_data.py: each data set rebuilt from tiny copies of its source repositories.

The copies are zips laid out as GitHub's branch zips are (one REPO-BRANCH/ top folder, the
repository's folders as the data README describes them), served from 127.0.0.1 in place of
codeload.github.com; nothing is fetched from the internet.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from deepfake_detector.cli import run
from scripts import rebuild_data

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
LAYOUT = [f"{split}/{label}" for split in ("Train", "Validation", "Test") for label in ("Real", "Fake")]


def jpeg(
    color: tuple[int, int, int],
    size: tuple[int, int] = (40, 30),
    mode: str = "RGB",
    fmt: str = "JPEG",
    mark: int | None = None,
) -> bytes:
    """A plain image (JPEG quality 75 unless ``fmt`` says otherwise); ``mark`` blackens one pixel, to tell apart."""
    image = Image.new("RGB", size, color)
    if mark is not None:
        image.putpixel((mark, 0), (0, 0, 0))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt, quality=75)
    return buffer.getvalue()


def fraction(key: str) -> float:
    """The documented split key: a name's SHA-256 read as a number in [0, 1)."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) / 2**256


def names_in(low: float, high: float, make, count: int) -> list[str]:
    """The first ``count`` names ``make(i)`` whose fraction lies in [low, high)."""
    found, i = [], 0
    while len(found) < count:
        if low <= fraction(make(i)) < high:
            found.append(make(i))
        i += 1
    return found


def files_under(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.fixture()
def github(tmp_path):
    """A stand-in for codeload.github.com on 127.0.0.1, recording every path asked for."""
    served = tmp_path / "served"
    served.mkdir()
    asked = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def publish(repo: str, branch: str, files: dict[str, bytes]) -> None:
        """Serve ``files`` as GitHub serves REPO's BRANCH zip."""
        path = served / repo / "zip" / "refs" / "heads" / branch
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(f"{repo.split('/')[1]}-{branch}/{name}", data)

    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}", asked=asked, publish=publish)
    server.shutdown()
    server.server_close()


def rebuild(github, tmp_path, *argv: str) -> int:
    args = rebuild_data.get_args_parser().parse_args(
        [*argv, "--base-url", github.url, "--cache-dir", str(tmp_path / "cache")]
    )
    return run(rebuild_data.PROG, rebuild_data.main, args)


def rebuilt(github, tmp_path, name: str, folder: str | None = None) -> Path:
    """Data set ``name`` rebuilt into ``tmp_path / folder`` (default: its name); the test fails unless it exits 0."""
    out = tmp_path / (folder or name)
    assert rebuild(github, tmp_path, name, "--out", str(out)) == 0
    return out


def checksums_are_right(folder: Path) -> str:
    sums = (folder / "SHA256SUMS").read_text()
    images = sorted(name for name in files_under(folder) if name.endswith(".jpg"))
    assert sums == "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in images)
    return sums


def q90_tables() -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG", quality=90)
    return Image.open(buffer).quantization


def assert_reencoded(path: Path, size: int, color: tuple[int, int, int], source: bytes) -> None:
    """``path`` is ``source`` as the data README says: decoded, RGB, resized with Lanczos, JPEG quality 90."""
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (size, size)), path
        assert image.quantization == q90_tables(), path  # quality 90, whatever the source's was
        assert np.abs(np.asarray(image, dtype=float).mean(axis=(0, 1)) - color).max() < 4, path
    expected = io.BytesIO()
    resized = Image.open(io.BytesIO(source)).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    resized.save(expected, "JPEG", quality=90)
    assert path.read_bytes() == expected.getvalue(), path


# ----------------------------------------------------------------------------- lfw-faceswap


def lfw_sources() -> tuple[dict[str, bytes], dict[str, tuple[tuple[int, int, int], bytes]]]:
    """The repository's split folder, two faces per class and split, one grey, and a folder not to take;
    and the colour and source bytes of each file the data set should have."""
    files, made = {"README.md": b"# Fake vs Real Face Detection\n"}, {}
    split_names = {"train": "Train", "val": "Validation", "test": "Test"}
    for index, (folder, split) in enumerate(split_names.items()):
        for label in ("real", "fake"):
            for number in (index, 10 + index):
                color = (15 * number + 30, 200 if label == "fake" else 60, 90)
                mode = "L" if number == 11 else "RGB"
                if mode == "L":
                    color = (int(0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]),) * 3
                name = f"{label}_{number}.jpg"
                source = jpeg(color, mode=mode, mark=number)
                files[f"data/processed/LFW_faceswap_split/{folder}/{label}/{name}"] = source
                made[f"{split}/{label.capitalize()}/{name}"] = color, source
    files["data/processed/LFW_faceswap/fake/fake_99.jpg"] = jpeg((0, 0, 0))  # the unsplit copy: not taken
    return files, made


def test_lfw_faceswap_is_the_repositorys_split_as_128_px_jpeg_q90_with_checksums(github, tmp_path):
    files, made = lfw_sources()
    github.publish("Rees451/faces-fake-vs-real", "master", files)
    out = rebuilt(github, tmp_path, "lfw-faceswap")
    assert files_under(out) == sorted([*made, "SHA256SUMS"])
    for name, (color, source) in made.items():
        assert_reencoded(out / name, 128, color, source)
    sums = checksums_are_right(out)
    assert github.asked == ["/Rees451/faces-fake-vs-real/zip/refs/heads/master"]
    assert files_under(tmp_path / "cache") == ["Rees451-faces-fake-vs-real-master.zip"]  # nothing extracted is left

    again = rebuilt(github, tmp_path, "lfw-faceswap", "again")
    assert (again / "SHA256SUMS").read_text() == sums  # byte for byte the same
    assert len(github.asked) == 1  # the zip came from the cache


# ----------------------------------------------------------------------------- dfdc-faces


def dfdc_sources() -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """faces_224/ and metadata.csv; groups named so their hashes land in each split and outside the kept window."""

    def videos(i: int) -> str:
        return f"v{i:09d}.mp4"

    train = names_in(0.08, 0.56, videos, 3)
    validation, test = names_in(0.56, 0.62, videos, 1), names_in(0.62, 0.68, videos, 2)
    below, above = names_in(0.0, 0.08, videos, 1), names_in(0.68, 1.0, videos, 1)
    fakes = {
        train[0]: ["f1a", "f1b", "f1c", "f1gone"],
        train[1]: [],
        train[2]: ["f3a"],
        validation[0]: ["f4a"],
        test[0]: ["f5same"],
        test[1]: ["f8a"],
        below[0]: ["f6a"],
        above[0]: ["f7a"],
    }
    real_crops = {video: Path(video).stem for video in fakes if video != train[2]}  # train[2]: no real crop
    rows, crops = [["videoname", "original_width", "original_height", "label", "original"]], {}
    rng = np.random.default_rng(0)
    for video, stem in real_crops.items():
        rows.append([video, "224", "224", "REAL", ""])
        crops[stem] = jpeg(tuple(int(v) for v in rng.integers(0, 255, 3)), size=(224, 224))
    for video, stems in fakes.items():
        for stem in stems:
            rows.append([f"{stem}.mp4", "224", "224", "FAKE", video])
            crops[stem] = jpeg(tuple(int(v) for v in rng.integers(0, 255, 3)), size=(224, 224))
    del crops["f1gone"]  # listed in metadata.csv, no crop in faces_224/
    crops["f5same"] = crops[real_crops[test[0]]]  # an exact duplicate of its real crop
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    files = {f"faces_224/{stem}.jpg": data for stem, data in crops.items()} | {"metadata.csv": text.getvalue().encode()}
    groups = {"train": train, "validation": validation, "test": test, "outside": below + above}
    return files, groups


def test_dfdc_faces_keeps_each_source_video_in_one_split_with_its_bytes(github, tmp_path):
    files, groups = dfdc_sources()
    github.publish("i-Shreyansh/DeepFake-Detection", "main", files)
    out = rebuilt(github, tmp_path, "dfdc-faces")
    train, (validation,), (test, test_too) = groups["train"], groups["validation"], groups["test"]
    with open(out / "sources.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["split", "class", "file", "source_video"]
    (chosen,) = [name for _, label, name, video in rows[1:] if video == train[0] and label == "Fake"]
    assert chosen in ("f1a.jpg", "f1b.jpg", "f1c.jpg")  # one fake of the three with a crop, seeded
    expected = [
        ["Train", "Real", f"{Path(train[0]).stem}.jpg", train[0]],
        ["Train", "Fake", chosen, train[0]],
        ["Train", "Real", f"{Path(train[1]).stem}.jpg", train[1]],  # a real video no fake was made from
        ["Train", "Fake", "f3a.jpg", train[2]],  # a fake whose real crop is missing
        ["Validation", "Real", f"{Path(validation).stem}.jpg", validation],
        ["Validation", "Fake", "f4a.jpg", validation],
        ["Test", "Real", f"{Path(test).stem}.jpg", test],  # f5same, the same bytes as this real crop, dropped
        ["Test", "Real", f"{Path(test_too).stem}.jpg", test_too],
        ["Test", "Fake", "f8a.jpg", test_too],
    ]
    assert rows[1:] == sorted(expected, key=lambda row: (row[3], row[1] != "Real"))  # by source video, real first
    assert files_under(out) == sorted(
        [f"{split}/{label}/{name}" for split, label, name, _ in rows[1:]] + ["SHA256SUMS", "sources.csv"]
    )
    for split, label, name, _ in rows[1:]:
        assert (out / split / label / name).read_bytes() == files[f"faces_224/{name}"]  # not re-encoded
    sums = checksums_are_right(out)
    assert "sources.csv" not in sums

    again = rebuilt(github, tmp_path, "dfdc-faces", "again")
    assert (again / "SHA256SUMS").read_text() == sums
    assert (again / "sources.csv").read_bytes() == (out / "sources.csv").read_bytes()


def test_dfdc_faces_choice_of_fake_follows_the_seed(tmp_path):
    files, groups = dfdc_sources()
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    trees = {rebuild_data.DFDC.repo: tmp_path}

    def fakes_chosen(seed: int) -> list[str]:
        entries = rebuild_data.dfdc_entries(trees, seed)
        return [entry.name for entry in entries if entry.group == groups["train"][0] and entry.label == "Fake"]

    chosen = [fakes_chosen(seed) for seed in range(12)]
    assert all(len(names) == 1 for names in chosen)
    assert len({names[0] for names in chosen}) > 1  # the seed decides
    assert chosen == [fakes_chosen(seed) for seed in range(12)]  # and only the seed


# ----------------------------------------------------------------------------- gan-faces


def test_gan_faces_samples_each_folder_splits_by_file_name_and_reencodes_at_256_px(github, tmp_path, monkeypatch):
    monkeypatch.setattr(rebuild_data, "GPHOTOS_PER_FOLDER", 3)
    numbers = [
        n
        for low, high in ((0, 0.7), (0.7, 0.85), (0.85, 1))
        for n in names_in(low, high, lambda i: f"roeishc/{i}.jpg", 2)
    ]
    numbers = [Path(n).stem.split("/")[-1] for n in numbers]
    roeishc = {"README.md": b"# real-or-fake\n", "TestData/502.jpg": jpeg((1, 2, 3))}  # unlabelled: not taken
    colors = {}
    for index, number in enumerate(numbers):
        real, fake = (200, 40 + 20 * index, 60), (30, 40 + 20 * index, 220)
        roeishc[f"TrainData/Real/{number}.jpg"] = jpeg(real, size=(60, 40), mark=index)
        roeishc[f"TrainData/Fake/{number}.jpg"] = jpeg(fake, size=(40, 60), mark=index)
        colors[f"Real/roeishc_{number}.jpg"], colors[f"Fake/roeishc_{number}.jpg"] = real, fake
    roeishc[f"TrainData/Fake/{numbers[1]}.jpg"] = roeishc[f"TrainData/Real/{numbers[0]}.jpg"]  # a duplicate
    del colors[f"Fake/roeishc_{numbers[1]}.jpg"]
    roeishc[f"TrainData/Real/{numbers[2]}.jpg"] = jpeg(colors[f"Real/roeishc_{numbers[2]}.jpg"], mode="RGBA", fmt="PNG")
    sources = {name: roeishc[f"TrainData/{name.replace('roeishc_', '')}"] for name in colors}
    generated, folder_colors = {"README.md": b"# Generated faces\n"}, {}
    for index, folder in enumerate(("female/asian", "female/white", "male/black", "male/latino")):
        folder_colors[folder] = (50 * index + 20, 120, 120)
        for i in range(5):
            name = f"images/{folder}/{i:08x}-0000-4000-8000-{index:012x}.jpg"
            generated[name] = jpeg(folder_colors[folder], (50, 50), mark=i)
    github.publish("roeishc/real-or-fake-face-image-classification", "main", roeishc)
    github.publish("hmdghoul/generated-faces", "main", generated)
    out = rebuilt(github, tmp_path, "gan-faces")

    written = [name for name in files_under(out) if name.endswith(".jpg")]
    roeishc_written = {name.split("/", 1)[1]: name.split("/")[0] for name in written if "/roeishc_" in name}
    assert set(roeishc_written) == set(colors)
    for name, split in roeishc_written.items():
        number = name.split("_")[1]
        assert split == (
            "Train"
            if fraction(f"roeishc/{number}") < 0.7
            else "Validation"
            if fraction(f"roeishc/{number}") < 0.85
            else "Test"
        )
        assert_reencoded(out / split / name, 256, colors[name], sources[name])
    gphotos = [name for name in written if "/gphotos_" in name]
    for folder, color in folder_colors.items():
        sex, ethnicity = folder.split("/")
        taken = [name for name in gphotos if f"/gphotos_{sex}_{ethnicity}_" in name]
        assert len(taken) == 3  # the sample's size, of 5
        for name in taken:
            source = name.split(f"gphotos_{sex}_{ethnicity}_")[1]
            assert name.startswith(("Train/", "Validation/", "Test/")) and "/Fake/" in name
            expected = fraction(f"hmdghoul/{source}")
            assert name.split("/")[0] == ("Train" if expected < 0.7 else "Validation" if expected < 0.85 else "Test")
            assert_reencoded(out / name, 256, color, generated[f"images/{folder}/{source}"])
    sums = checksums_are_right(out)

    again = rebuilt(github, tmp_path, "gan-faces", "again")
    assert (again / "SHA256SUMS").read_text() == sums  # the same sample, the same bytes


# ----------------------------------------------------------------------------- failures


@pytest.mark.slow
def test_a_missing_branch_exits_non_zero_with_one_line_naming_the_option(github, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.rebuild_data",
            "lfw-faceswap",
            "--out",
            str(tmp_path / "out"),
            "--base-url",
            github.url,
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("rebuild_data: download of ") and "HTTP 404" in lines[-1]
    assert lines[-1].endswith("pass --branch Rees451/faces-fake-vs-real=NAME")
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_plain_http_is_refused_but_to_this_machine(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(rebuild_data, "download", lambda *args, **kwargs: pytest.fail("asked the network"))
    for url in ("http://example.com", "ftp://127.0.0.1/x", "http://127.0.0.1.example.com"):
        args = rebuild_data.get_args_parser().parse_args(["gan-faces", "--out", str(tmp_path / "o"), "--base-url", url])
        assert run(rebuild_data.PROG, rebuild_data.main, args) == 2
        error = capsys.readouterr().err
        assert error == f"rebuild_data: --base-url {url}: use https (plain http only to 127.0.0.1 or localhost)\n"
    assert rebuild_data.checked_base_url("http://localhost:8000/") == "http://localhost:8000"
    assert rebuild_data.checked_base_url("https://mirror.example.org/zips") == "https://mirror.example.org/zips"


def test_refusals_are_one_line_and_leave_no_output(github, tmp_path, capsys):
    files, _ = lfw_sources()
    github.publish("Rees451/faces-fake-vs-real", "master", files)
    out = str(tmp_path / "out")
    cases = {
        ("--sha256", "Rees451/faces-fake-vs-real=" + "0" * 64): "SHA-256 is ",
        ("--branch", "someone/else=main"): "expected OWNER/REPO=VALUE",
        ("--archive", f"Rees451/faces-fake-vs-real={tmp_path / 'none.zip'}"): "no such file",
    }
    for extra, message in cases.items():
        args = rebuild_data.get_args_parser().parse_args(
            ["lfw-faceswap", "--out", out, "--base-url", github.url, "--cache-dir", str(tmp_path / "cache"), *extra]
        )
        assert run(rebuild_data.PROG, rebuild_data.main, args) == 2, extra
        error = capsys.readouterr().err.strip().splitlines()[-1]  # after the download's progress bar, if any
        assert error.startswith("rebuild_data: ") and message in error, error
        assert not Path(out).exists()

    github.publish("Rees451/faces-fake-vs-real", "main", {"README.md": b"no data here\n"})
    assert rebuild(github, tmp_path, "lfw-faceswap", "--out", out, "--branch", "Rees451/faces-fake-vs-real=main") == 2
    assert "has no data/processed/LFW_faceswap_split/ folder" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("the user's")
    assert rebuild(github, tmp_path, "lfw-faceswap", "--out", out) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert files_under(tmp_path / "out") == ["mine.txt"]


# ----------------------------------------------------------------------------- the reference copies


@pytest.mark.skipif(not (SHARED_DATA / "dfdc-faces" / "sources.csv").is_file(), reason="no reference copy here")
def test_the_split_rules_give_the_reference_copies_splits():
    """The split bounds were read from the reference copies (the data README names only the hash): they must
    put every file of those copies where it is."""
    with open(SHARED_DATA / "dfdc-faces" / "sources.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) > 20_000
    for row in rows:
        split = rebuild_data.split_of(row["source_video"], rebuild_data.DFDC_SPLITS, rebuild_data.DFDC_START)
        assert split == row["split"], row
    gan = SHARED_DATA / "gan-faces"
    names = [path.relative_to(gan).parts for path in gan.rglob("*.jpg")]
    assert len(names) > 1400
    for split, _, name in names:
        source, rest = name.split("_", 1)
        key = f"roeishc/{rest}" if source == "roeishc" else f"hmdghoul/{rest.split('_', 2)[2]}"
        assert rebuild_data.split_of(key, rebuild_data.GAN_SPLITS) == split, name
