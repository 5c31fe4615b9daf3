"""Per-upload latency: our server against a baseline that does what the original did.

    python -m benchmarks.latency [--model PATH] [--requests 100] [--rounds 3]

Our server (its default TFLite runtime, and with ``--runtime keras``) and the baseline load
the same model file; the same 256x256 JPEGs are posted one at a time to each, alternating
rounds. Prints p50/p99 per server (median over rounds) and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests

from benchmarks.common import REPO, jpegs_256, percentiles
from deepfake_detector.detector import DEFAULT_MODEL_PATH
from harness.server import running_server


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = jpegs_256(args.requests)
    names = ("baseline", "ours", "ours, keras runtime")
    results = {name: [] for name in names}
    with (
        running_server(args.model, "--threads", "4") as ours,
        running_server(args.model, "--threads", "4", "--runtime", "keras") as ours_keras,
        running_server(args.model, script=REPO / "benchmarks" / "baseline_server.py") as baseline,
    ):
        for round_index in range(args.rounds):
            for name, url in zip(names, (baseline, ours, ours_keras)):
                stats = percentiles(measure(url, images))
                results[name].append(stats)
                print(
                    f"round {round_index + 1} {name:20s} p50 {stats['p50']:7.1f} ms  p99 {stats['p99']:7.1f} ms",
                    flush=True,
                )
    summary = {
        name: {k: statistics.median(r[k] for r in rounds) for k in ("p50", "p99")} for name, rounds in results.items()
    }
    print(
        f"\nmodel {args.model}, {args.requests} sequential 256x256 JPEG uploads x {args.rounds} rounds (median of rounds)"
    )
    for name in names:
        ratio = summary[name]["p50"] / summary["baseline"]["p50"]
        print(
            f"{name:20s} p50 {summary[name]['p50']:7.1f} ms  p99 {summary[name]['p99']:7.1f} ms  "
            f"p50 / baseline p50 = {ratio:.3f}"
        )
    ratio = summary["ours"]["p50"] / summary["baseline"]["p50"]
    print(f"ours/baseline p50 = {ratio:.3f} (target <= 0.2): {'met' if ratio <= 0.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
