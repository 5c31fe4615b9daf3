"""Load test: many concurrent uploads to the real server on 127.0.0.1.

    python -m benchmarks.load_test [--model PATH] [--requests 1000] [--concurrency 16] [--threads 4]

Prints successes, errors, p50/p90/p99 latency, requests/s, and the server's peak resident
memory after the run (one waitress process).
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.common import jpegs_256, peak_rss_mb, percentiles
from deepfake_detector.detector import DEFAULT_MODEL_PATH
from harness.server import running_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4, help="waitress threads of the server")
    args = parser.parse_args()
    images = jpegs_256(64)
    local = threading.local()

    def one(i: int):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        start = time.perf_counter()
        try:
            response = session.post(
                f"{url}/api/predict", files={"file": ("face.jpg", images[i % len(images)])}, timeout=60
            )
            ok = response.status_code == 200 and "fake_probability" in response.json()
        except requests.RequestException:
            ok = False
        return ok, (time.perf_counter() - start) * 1000

    with running_process(args.model, "--threads", str(args.threads)) as (url, process):
        rss_before = peak_rss_mb(process.pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
        rss_after = peak_rss_mb(process.pid)
        healthy = requests.get(f"{url}/healthz", timeout=10).ok
    successes = sum(ok for ok, _ in results)
    stats = percentiles([ms for _, ms in results])
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, server: waitress {args.threads} threads, model {args.model}"
    )
    print(f"successes {successes}  errors {args.requests - successes}")
    print(f"latency p50 {stats['p50']:.1f} ms  p90 {stats['p90']:.1f} ms  p99 {stats['p99']:.1f} ms")
    print(f"throughput {args.requests / wall:.1f} requests/s over {wall:.1f} s")
    print(
        f"server peak RSS {rss_before:.0f} MB after start-up, {rss_after:.0f} MB after {args.requests} requests; healthz {'ok' if healthy else 'FAILED'}"
    )


if __name__ == "__main__":
    main()
