"""``python train.py`` on an archive of the Kaggle archive's size: memory, cache and throughput.

    python -m benchmarks.full_archive [--scale 1] [--compare-scale 0.1] [--arch seed] [--steps 20]
                                      [--runs 3] [--work-dir DIR] [--keep]

For each scale (the full one, then ``--compare-scale`` as the reference for "flat in size"):
writes a synthetic archive of the real layout and counts (``benchmarks/synthetic_archive.py``),
then runs the real ``train.py --archive`` twice, cold (extraction and cache build) and warm
(cache reused), each for ``--steps`` training steps with Validation and Test scored whole,
and reports:
- extraction time, cache build time and size (from train.py's own log lines);
- time from starting ``python train.py`` to its first finished training step, cold and warm;
- peak resident memory: of the train.py process (``ru_maxrss``) and of it with its cache-building
  worker processes, sampled every 0.1 s;
- training images/s (train.py's log, steps after the first);
then, at the full scale, the input pipeline alone (no model) against the tutorial's
``image_dataset_from_directory`` on the same extracted Train folder, both read from the page
cache (each read once first), medians of ``--runs`` runs taken in turn: images/s without and
with augmentation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.archive import write_archive

REPO = Path(__file__).resolve().parent.parent


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending += [int(child) for child in children]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024.0


def run_train(args: list[str]) -> dict:
    """Run train.py; returns its timings (from its log), peak memory and exit status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    result = {
        "tree_peak_mb": 0.0,
        "extract_s": None,
        "cache_s": 0.0,
        "cache_gb": 0.0,
        "first_step_s": None,
        "train_images_per_s": None,
        "log": [],
    }
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            result["tree_peak_mb"] = max(result["tree_peak_mb"], tree_rss_mb(process.pid))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        result["log"].append(line.rstrip())
        if match := re.search(r"extracted .* in ([\d.]+) s", line):
            result["extract_s"] = float(match.group(1))
        elif match := re.search(r"cached .* ([\d.]+) GB, in ([\d.]+) s", line):
            result["cache_gb"] += float(match.group(1))
            result["cache_s"] += float(match.group(2))
        elif "first training step done" in line and result["first_step_s"] is None:
            result["first_step_s"] = time.perf_counter() - start
        elif match := re.search(r"([\d.]+) training images/s", line):
            result["train_images_per_s"] = float(match.group(1))
    _, status, usage = os.wait4(process.pid, 0)
    stop.set()
    sampler.join()
    result["returncode"] = os.waitstatus_to_exitcode(status)
    result["main_peak_mb"] = usage.ru_maxrss / 1024.0
    result["wall_s"] = time.perf_counter() - start
    if result["returncode"] != 0:
        tail = "\n".join(line for line in result["log"][-30:] if "it/s]" not in line and "img/s]" not in line)
        raise SystemExit(f"train.py {' '.join(args)} exited with {result['returncode']}:\n{tail}")
    return result


def pipeline_rates(dataset_root: Path, cache_dir: Path, image_size: int, augment: str, batches: int, runs: int) -> dict:
    """Images/s of the input pipelines alone (no model), medians of ``runs`` runs taken in turn."""
    import keras

    from deepfake_detector import pipeline
    from deepfake_detector.data import DatasetHandler
    from deepfake_detector.recipes import DataConfig

    data = DataConfig(image_size=image_size, cache_dir=str(cache_dir))
    train = DatasetHandler(dataset_download_dir=dataset_root, config=data).splits(("Train",))["Train"]
    # Both read from the page cache, as they do from the second epoch on when memory allows:
    # this disk reads far slower than either pipeline (printed below).
    start = time.perf_counter()
    read = _read_all([train.directory / "images.u8"])
    print(
        f"page cache warmed: our Train cache, {read / 1e9:.1f} GB, in {time.perf_counter() - start:.0f} s", flush=True
    )
    start = time.perf_counter()
    read = _read_all(sorted((dataset_root / "Train").rglob("*.jpg")))
    print(
        f"page cache warmed: the Train JPEGs, {read / 1e9:.1f} GB, in {time.perf_counter() - start:.0f} s", flush=True
    )
    feeds = {
        "tutorial loader (image_dataset_from_directory)": keras.utils.image_dataset_from_directory(
            dataset_root / "Train",
            image_size=(image_size, image_size),
            batch_size=64,
            label_mode="binary",
            seed=1,
        ),
        "ours, cached, no augmentation": pipeline.make_dataset(train, 64, training=True, config=DataConfig(seed=1)),
        f"ours, cached, augmentation '{augment}'": pipeline.make_dataset(
            train, 64, training=True, config=DataConfig(augment=augment, seed=1)
        ),
    }
    rates = {name: [] for name in feeds}
    for _ in range(runs):
        for name, dataset in feeds.items():
            iterator = iter(dataset.repeat())  # small archives: more batches than one epoch
            for _ in range(5):  # warm-up: thread pools, the shuffle buffer, the first files
                next(iterator)
            start, images = time.perf_counter(), 0
            for _ in range(batches):
                images += int(next(iterator)[0].shape[0])
            rates[name].append(images / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def _get(run: dict | None, key: str, divide: float, spec: str) -> str:
    return "-" if run is None else format(run[key] / divide, spec)


def _read_all(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            while chunk := file.read(1 << 24):
                total += len(chunk)
    return total


def print_runs(results: dict, args: argparse.Namespace) -> None:
    print()
    print(f"train.py --arch {args.arch}, {args.steps} steps; Validation and Test scored whole")
    header = f"{'':38s}" + "".join(f"{f'scale {s:g}':>16s}" for s in results)
    print(header)
    rows = [
        ("archive size (GB)", lambda r: f"{r['archive_gb']:.2f}"),
        ("extraction (s)", lambda r: f"{r['cold']['extract_s']:.0f}"),
        ("cache build (s)", lambda r: f"{r['cold']['cache_s']:.0f}"),
        ("cache size (GB)", lambda r: f"{r['cold']['cache_gb']:.2f}"),
        ("time to first step, cold (s)", lambda r: f"{r['cold']['first_step_s']:.0f}"),
        ("time to first step, warm (s)", lambda r: f"{r['warm']['first_step_s']:.1f}" if r["warm"] else "-"),
        ("whole run, cold / warm (s)", lambda r: f"{r['cold']['wall_s']:.0f} / {_get(r['warm'], 'wall_s', 1, '.0f')}"),
        (
            "peak RSS train.py, cold / warm (GB)",
            lambda r: f"{r['cold']['main_peak_mb'] / 1e3:.2f} / {_get(r['warm'], 'main_peak_mb', 1e3, '.2f')}",
        ),
        ("peak RSS with cache workers (GB)", lambda r: f"{r['cold']['tree_peak_mb'] / 1e3:.2f}"),
        (
            "training images/s, cold / warm",
            lambda r: f"{r['cold']['train_images_per_s']:.0f} / {_get(r['warm'], 'train_images_per_s', 1, '.0f')}",
        ),
    ]
    for name, cell in rows:
        print(f"{name:38s}" + "".join(f"{cell(r):>16s}" for r in results.values()))
    if args.compare_scale:
        small, big = results[args.compare_scale], results[args.scale]
        peak = lambda r: max(run["main_peak_mb"] for run in (r["cold"], r["warm"]) if run)  # noqa: E731
        print(
            f"peak RSS of train.py, scale {args.scale:g} / scale {args.compare_scale:g}: "
            f"{peak(big) / peak(small):.3f} (target <= 1.10)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Kaggle archive's counts (default: 1)")
    parser.add_argument(
        "--compare-scale", type=float, default=0.1, help="the smaller archive memory is compared with (0: none)"
    )
    parser.add_argument("--arch", default="seed", help="train.py --arch (default: seed)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default: 20)")
    parser.add_argument("--batches", type=int, default=150, help="batches of 64 per input-pipeline run (default: 150)")
    parser.add_argument("--runs", type=int, default=3, help="input-pipeline runs, median reported (default: 3)")
    parser.add_argument(
        "--work-dir", type=Path, help="where archives, data and caches go (default: a temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (archives are reused from it)")
    parser.add_argument("--no-warm", dest="warm", action="store_false", help="skip the second (warm cache) runs")
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="only the input-pipeline comparison, on the data and cache an earlier --keep run left in --work-dir",
    )
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="full-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    from deepfake_detector.recipes import TrainConfig

    recipe = TrainConfig.for_arch(args.arch)
    print(
        f"work folder {work}; train.py --arch {args.arch} ({recipe.image_size} px, augmentation '{recipe.augment}'), "
        f"{args.steps} steps of {recipe.batch_size}",
        flush=True,
    )
    results = {}
    try:
        for scale in [] if args.pipeline_only else [args.scale] + ([args.compare_scale] if args.compare_scale else []):
            archive = work / f"synthetic-{scale:g}.zip"
            start = time.perf_counter()
            if not archive.exists():
                written = write_archive(archive, scale)
                print(
                    f"scale {scale:g}: wrote {written['images']} images, {written['bytes'] / 1e9:.2f} GB, "
                    f"in {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
            data_dir = work / f"data-{scale:g}"
            shutil.rmtree(data_dir, ignore_errors=True)
            command = [
                "--arch",
                args.arch,
                "--archive",
                str(archive),
                "--data-dir",
                str(data_dir),
                "--output",
                str(work / "model.keras"),
                "--epochs",
                "1",
                "--steps-per-epoch",
                str(args.steps),
                "--verbose",
                "2",
            ]
            cold = run_train(command)
            print(f"scale {scale:g} cold: {cold['wall_s']:.0f} s", flush=True)
            warm = run_train(command) if args.warm else None
            if warm:
                print(f"scale {scale:g} warm: {warm['wall_s']:.0f} s", flush=True)
            results[scale] = {
                "cold": cold,
                "warm": warm,
                "data_dir": data_dir,
                "archive_gb": archive.stat().st_size / 1e9,
            }
        from deepfake_detector.cache import default_cache_dir
        from deepfake_detector.data import find_dataset_root

        data_dir = work / f"data-{args.scale:g}"
        root = find_dataset_root(data_dir)
        augment = (
            recipe.augment if recipe.augment != "none" else "full"
        )  # the seed recipe has none: show the shipped one's
        rates = pipeline_rates(root, default_cache_dir(data_dir), recipe.image_size, augment, args.batches, args.runs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if results:
        print_runs(results, args)
    print()
    print(
        f"input pipeline alone at {recipe.image_size} px, scale {args.scale:g} Train, batch 64, "
        f"{args.batches} batches x {args.runs} runs (median images/s)"
    )
    for name, value in rates.items():
        print(f"{name:50s} {value:9.0f} images/s")
    tutorial, plain = list(rates.values())[:2]
    print(f"ours (no augmentation) / tutorial loader = {plain / tutorial:.1f} (target >= 3)")


if __name__ == "__main__":
    main()
