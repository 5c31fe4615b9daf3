#!/usr/bin/env bash
# Debian's chromium and nginx, for the browser test and the reverse-proxy test of
# docs/deployment.md, and python3-venv, which `python3 -m venv` needs on a bare Debian or
# Ubuntu (apt-get, as root or through sudo). The Python side is only
# `pip install -r requirements.txt`.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && [ -x /usr/sbin/nginx ] && python3 -c "import ensurepip" 2>/dev/null; then
  exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium nginx python3-venv >/dev/null
