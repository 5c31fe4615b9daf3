"""Per-upload latency: our server against a baseline that does what the original did, on each model.

    python -m benchmarks.latency [--model PATH ...] [--requests 100] [--rounds 3] [--keras-runtime]

By default two models: the shipped one, and one of the original recipe (``python train.py``'s
4-block CNN at 128 px), built here untrained: its weights do not change what a request costs.
For each model, our server (its default runtime; with ``--keras-runtime`` also ``--runtime
keras``) and the baseline load the same model file. Once each server answers /healthz and has
gone idle (ours traces Grad-CAM in the background for its first seconds, on a slow CPU up to a
minute), the same 256x256 JPEGs are posted one at a time to each, alternating rounds. Prints
p50/p99 per server (median over rounds) and the ratio of our p50 to the baseline's.

Each round also scores the same uploads in process on the server's runtime while the servers
wait (``benchmarks.latency_stages``: decode, find faces and crop, the model): the work no HTTP
change can remove, measured in the same minutes as the servers. Its ratio to the baseline's p50
is the best our server could reach.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import requests

from benchmarks.common import REPO, jpegs_256, percentiles
from benchmarks.latency_stages import STAGES, one_round
from deepfake_detector import faces
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
from deepfake_detector.recipes import SERVING_RUNTIME
from harness.server import running_process, wait_until_idle

TARGET, GOAL = 0.15, 0.1


def measure(url: str, images: list[bytes], warmup: int = 10) -> list[float]:
    session = requests.Session()
    for data in images[:warmup]:
        session.post(f"{url}/api/predict", files={"file": ("face.jpg", data)}).raise_for_status()
    times = []
    for data in images:
        start = time.perf_counter()
        response = session.post(f"{url}/api/predict", files={"file": ("face.jpg", data)})
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return times


def original_recipe_model(folder: Path) -> Path:
    """``python train.py``'s network (the 4-block CNN, 128 px), untrained, saved with its metadata."""
    from deepfake_detector.model import save_model
    from deepfake_detector.recipes import TrainConfig
    from deepfake_detector.training import build_training_model, metadata_for

    config = TrainConfig()
    return save_model(build_training_model(config), metadata_for(config, "original-recipe"), folder / "original.keras")


def compare(model: str, images: list[bytes], rounds: int, keras_runtime: bool) -> dict[str, dict]:
    """Each server's p50 and p99 on ``model``, and the in-process stages (``"in process"``: median ms
    per upload of each of ``latency_stages.STAGES``), medians of ``rounds`` alternating rounds."""
    servers = {"baseline": ((), REPO / "benchmarks" / "baseline_server.py"), "ours": (("--threads", "4"), None)}
    if keras_runtime:
        servers["ours, keras runtime"] = (("--threads", "4", "--runtime", "keras"), None)
    results = {name: [] for name in servers}
    stages = []
    urls = {}
    with contextlib.ExitStack() as stack:
        for name, (extra, script) in servers.items():
            options = {"script": script} if script else {}
            urls[name], process = stack.enter_context(running_process(model, *extra, **options))
            waited = wait_until_idle(process.pid)  # ours traces Grad-CAM in the background at start
            print(f"{name}: idle {waited:.0f} s after answering /healthz", flush=True)
        detector = Detector.from_path(model, runtime=SERVING_RUNTIME)  # as the server scores
        finder = faces.default_finder()
        one_round(detector, finder, images[:10])  # warm-up
        for round_index in range(rounds):
            for name, url in urls.items():
                stats = percentiles(measure(url, images))
                results[name].append(stats)
                print(f"round {round_index + 1} {name:20s} p50 {stats['p50']:7.1f} ms  p99 {stats['p99']:7.1f} ms")
            stages.append(one_round(detector, finder, images))
            print(
                f"round {round_index + 1} {'in process, no HTTP':20s} total {stages[-1]['total']:7.1f} ms", flush=True
            )
    summary = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("p50", "p99")} for name, runs in results.items()
    }
    summary["in process"] = {stage: statistics.median(r[stage] for r in stages) for stage in STAGES}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a .keras model (repeatable; default: shipped and original)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keras-runtime", action="store_true", help="also our server with --runtime keras")
    args = parser.parse_args()
    images = jpegs_256(args.requests)
    with tempfile.TemporaryDirectory(prefix="latency-") as scratch:
        models = args.model or [str(DEFAULT_MODEL_PATH), str(original_recipe_model(Path(scratch)))]
        summaries = {}
        for model in models:
            print(f"\nmodel {model}", flush=True)
            summaries[model] = compare(model, images, args.rounds, args.keras_runtime)
    print(f"\n{args.requests} sequential 256x256 JPEG uploads x {args.rounds} rounds (median of rounds)")
    for model, summary in summaries.items():
        baseline = summary["baseline"]["p50"]
        floor = summary.pop("in process")
        for name, stats in summary.items():
            print(
                f"{Path(model).name:28s} {name:20s} p50 {stats['p50']:7.1f} ms  p99 {stats['p99']:7.1f} ms  "
                f"p50 / baseline p50 = {stats['p50'] / baseline:.3f}"
            )
        ratio = summary["ours"]["p50"] / baseline
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(f"{Path(model).name}: ours/baseline p50 = {ratio:.3f} (target <= {TARGET}: {verdict}; goal {GOAL})")
        print(
            f"{Path(model).name}: in process, no HTTP: "
            + " + ".join(f"{stage} {floor[stage]:.1f}" for stage in STAGES[:-1])
            + f" = {floor['total']:.1f} ms; / baseline p50 = {floor['total'] / baseline:.3f}"
        )


if __name__ == "__main__":
    main()
