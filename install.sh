#!/usr/bin/env bash
# The README's first command's install: everything `pipeline run all` needs, Python packages only, into ./.venv
# (and runtime/js/node_modules where npm exists). No apt-get, no root; safe to re-run on an existing .venv.
#
# - torch==2.13.0 first, pinned (an unpinned torch pulls a multi-GB CUDA build). Without a working NVIDIA GPU
#   (`nvidia-smi` absent or failing) the CPU build, from PyTorch's CPU wheel index; where that index is not
#   reachable, the pinned torch from pip's configured index (on this project's machines the CPU wheel is on
#   disk). With a GPU, the default build. The build installed is printed.
# - the project with its train, dev, report, engines, serve, ray and baseline extras (engines: OpenVINO and
#   tract, which the parity gate runs model.onnx in; serve: `pipeline serve`; ray: `pipeline predict --engine
#   ray`; baseline: scikit-learn; dev: pytest, ruff and the serve tests' client).
# - the JavaScript engines (onnxruntime-node, onnxruntime-web) where npm exists (--ignore-scripts:
#   onnxruntime-node's install script only downloads CUDA binaries); elsewhere the parity gate lists them as
#   skipped with the command that adds them.
# The test prerequisites that need the system's package manager (Chromium, hey, CMake, a C++ compiler, Node)
# are the second command's: `bash tests/setup.sh`.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
PYTHON=${PYTHON:-python3}
say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: seqship needs Python 3.10 or newer"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "$("$PYTHON" -V 2>&1) is too old: seqship needs Python 3.10 or newer (PYTHON=python3.11 ./install.sh)"

# A working .venv is reused; a missing or broken one is (re)made in place.
if ! .venv/bin/python -c '' >/dev/null 2>&1; then
  say "creating .venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv .venv ||
    die "'$PYTHON -m venv' failed (on Debian/Ubuntu the venv module is the python3-venv package)"
fi
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "NVIDIA GPU found: installing the default build of torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
else
  say "no NVIDIA GPU (nvidia-smi absent or failing): installing the CPU build of torch==$TORCH_VERSION"
  if ! err=$("$PY" -m pip install -q --timeout 15 --retries 0 --index-url "$TORCH_CPU_INDEX" \
    "torch==$TORCH_VERSION" 2>&1 >/dev/null); then
    say "PyTorch's CPU index ($TORCH_CPU_INDEX) is not reachable or could not install torch==$TORCH_VERSION (pip: $(
      printf '%s\n' "$err" | grep -m1 -E 'ERROR|Could not|Failed' | cut -c1-160 || true)); installing the pinned torch==$TORCH_VERSION from pip's configured index instead"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
fi

"$PY" -m pip install -q -e '.[train,dev,report,engines,serve,ray,baseline]'

if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  npm ci --prefix runtime/js --ignore-scripts --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null ||
    die "npm ci --prefix runtime/js failed (see above): the JavaScript engines need npm's registry"
  js="onnxruntime-node $(node -p 'require("./runtime/js/node_modules/onnxruntime-node/package.json").version'), onnxruntime-web $(node -p 'require("./runtime/js/node_modules/onnxruntime-web/package.json").version') (node $(node --version))"
else
  js="skipped: $(command -v node >/dev/null 2>&1 && echo 'npm is' || echo 'Node.js and npm are') not installed; add them with: sudo apt-get install -y nodejs npm && npm ci --prefix runtime/js --ignore-scripts (or: bash tests/setup.sh)"
fi

"$PY" - "$js" <<'PY'
import importlib.metadata as m
import sys

import torch

cuda = torch.version.cuda
build = f"CUDA {cuda} build" if cuda else ("ROCm build" if getattr(torch.version, "hip", None) else "CPU build")
print(f"install.sh: torch {torch.__version__} ({build})")


def version(dist):
    try:
        return m.version(dist)
    except m.PackageNotFoundError:
        return "missing"


names = ("seqship", "onnx", "onnxscript", "onnxruntime", "openvino", "tract", "numpy", "click", "starlette",
         "uvicorn", "ray", "pyarrow", "scikit-learn", "matplotlib", "pytest", "ruff")
print("install.sh: installed:", ", ".join(f"{d} {version(d)}" for d in names))
print("install.sh: JavaScript engines:", sys.argv[1])
PY
