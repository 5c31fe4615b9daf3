"""What the original inference.py did per upload, for comparison only (never ship this).

It saves the upload to disk, reloads it with ``keras.utils.load_img`` and calls
``model.predict`` on one image, as the tutorial did (the file name here is a random one,
not the client's, so running the benchmark is safe).
"""

import argparse
import os
import tempfile
import uuid

import keras
import numpy as np
from flask import Flask, jsonify, request

from deepfake_detector.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    model, metadata = load_model(args.model)
    size = metadata.image_size
    upload_dir = tempfile.mkdtemp(prefix="baseline-uploads-")
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.post("/api/predict")
    def predict():
        path = os.path.join(upload_dir, uuid.uuid4().hex)
        request.files["file"].save(path)
        image = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))
        score = float(model.predict(np.expand_dims(image, 0))[0][0])
        os.unlink(path)
        return jsonify(score=score)

    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
