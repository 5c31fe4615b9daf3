"""Where one upload's time goes outside the model: cProfile over the whole Flask request.

    python -m benchmarks.request_profile [--model PATH] [--requests 200] [--top 25]

Posts the same 256x256 JPEGs as ``benchmarks.latency`` to the app in process (Flask's test
client: no socket, no waitress), with the server's runtime, under cProfile. Prints the time per
request of the stages (multipart parsing, the structure probe and decoding, face finding, the
model, JSON) and the functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from benchmarks.common import jpegs_256
from deepfake_detector.detector import DEFAULT_MODEL_PATH, Detector
from deepfake_detector.recipes import SERVING_RUNTIME
from deepfake_detector.web import create_app

#: Stage name -> (file fragment, function name) of the call whose cumulative time is the stage's.
STAGES = {
    "request parsing (werkzeug form data)": ("werkzeug/formparser.py", "parse"),
    "probe the structure": ("deepfake_detector/preprocessing.py", "probe_image"),
    "decode": ("deepfake_detector/preprocessing.py", "decode"),
    "find faces + crop": ("deepfake_detector/faces.py", "model_inputs"),
    "model": ("deepfake_detector/detector.py", "scores"),
    "JSON answer": ("flask/json/provider.py", "response"),
    "the whole view": ("deepfake_detector/web.py", "api_predict"),
    "the whole request (Flask's wsgi_app)": ("flask/app.py", "wsgi_app"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    detector = Detector.from_path(args.model, runtime=SERVING_RUNTIME)
    client = create_app(detector).test_client()
    images = jpegs_256(args.requests)

    def post(data: bytes) -> None:
        response = client.post("/api/predict", data={"file": (io.BytesIO(data), "face.jpg")})
        assert response.status_code == 200, response.get_data(as_text=True)

    for data in images[:10]:
        post(data)  # warm-up
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for data in images:
        post(data)
    profile.disable()
    per_request = (time.perf_counter() - start) * 1000 / len(images)
    stats = pstats.Stats(profile)
    print(f"model {args.model}, {len(images)} requests in process: {per_request:.1f} ms each under cProfile")
    for stage, (fragment, function) in STAGES.items():
        total = sum(
            cumulative
            for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items()
            if fragment in path and name == function
        )
        print(f"  {stage:40s} {total * 1000 / len(images):6.2f} ms")
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
