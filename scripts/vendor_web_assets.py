#!/usr/bin/env python3
"""Copy the onnxruntime-web files the browser tool needs into the Python package.

The WASM runtime (~12 MB) is not committed: `npm ci` in web/ installs the pinned version from the
npm registry, and this script copies the three files the page loads into
src/segany/serve/web/vendor/ort/, from where `segany serve` serves them (no CDN). Run it after
cloning and before building a wheel; .ci/run does. Idempotent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
DIST = WEB / "node_modules" / "onnxruntime-web" / "dist"
TARGET = REPO / "src" / "segany" / "serve" / "web" / "vendor" / "ort"
FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def main() -> int:
    if not all((DIST / f).exists() for f in FILES):
        npm = shutil.which("npm")
        if npm is None:
            print("error: npm not found; install Node.js (apt-get install nodejs npm) and rerun", file=sys.stderr)
            return 2
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src, dst = DIST / name, TARGET / name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
    version = (WEB / "node_modules" / "onnxruntime-web" / "package.json").read_text()
    (TARGET / "VERSION").write_text(__import__("json").loads(version)["version"] + "\n")
    print(f"onnxruntime-web assets in {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
