#!/usr/bin/env bash
# Install segany and everything its tools and tests need, on a fresh machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU build of torch first (it lies on disk); a bare "torch" would pull GBs of CUDA packages.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev,serve,onnx]"

# Browser tool: node + Debian chromium for the browser tests, onnxruntime-web vendored into the package.
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  # Only what is missing: reinstalling Debian's nodejs beside a newer one breaks apt's resolution.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
(cd web && npm ci --no-audit --no-fund --loglevel=error)
python3 scripts/vendor_web_assets.py
