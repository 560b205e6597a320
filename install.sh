#!/usr/bin/env bash
# Installs everything seqship and its tests need, into ./.venv and runtime/js/node_modules.
# Python: torch first, pinned (on this project's machines the 2.13.0 CPU wheel is on disk; an unpinned
# torch pulls a multi-GB CUDA build), then the project with its train, dev, report, engines, serve and ray
# extras (engines: OpenVINO and tract, which the parity gate runs model.onnx in; serve: `pipeline serve`;
# ray: `pipeline predict --engine ray`).
# Debian packages: hey, the HTTP load tool of the serve tests and benchmark.
# Portable runtimes: the JavaScript packages (--ignore-scripts: onnxruntime-node's install script only
# downloads CUDA binaries), Chromium for the browser test, a C++ toolchain and CMake for libtorch.
set -euo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
pip install -q "torch==2.13.0"
pip install -q -e '.[train,dev,report,engines,serve,ray,baseline]'

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(build-essential)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v hey >/dev/null || missing+=(hey)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install.sh: missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' and retry" >&2
    exit 1
  fi
fi
npm ci --prefix runtime/js --ignore-scripts --no-audit --no-fund --loglevel=error

python - <<'PY'
import importlib.metadata as m
print("installed:", ", ".join(f"{d} {m.version(d)}" for d in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "tract", "numpy", "click", "starlette", "uvicorn", "ray", "pyarrow")))
PY
