"""The wheel installs one namespace, `seqship`, and an app with its own `runtime/`, `pipeline.py` and
`exporters.py` embeds the predictor from it (no torch in that environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIDES = ("runtime", "exporters", "pipeline")

pytestmark = pytest.mark.slow


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out


def test_the_wheel_installs_only_the_seqship_namespace_and_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"seqship"}, tops
    assert "seqship/__init__.py" not in names  # a namespace package: other distributions may add to it
    # Every module of the three folders is in the wheel (the package list in pyproject.toml is complete).
    sources = [
        p.relative_to(REPO).as_posix() for s in SIDES for p in (REPO / s).rglob("*.py") if "node_modules" not in p.parts
    ]
    missing = sorted(f for f in sources if f"seqship/{f}" not in names)
    assert missing == [], f"not in the wheel (add their package to [tool.setuptools] packages): {missing}"
    # The demo's page and the browser predictor travel with the runtime.
    assert {"seqship/runtime/js/web/index.html", "seqship/runtime/js/src/predictor.js"} <= set(names)
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "pipeline = seqship.pipeline.cli:main" in entry


APP = """
import json, sys
import runtime, pipeline, exporters          # the app's own modules
from seqship.runtime import Predictor, __version__
p = Predictor.load(sys.argv[1])
print(json.dumps({
    "app": [runtime.WHO, pipeline.WHO, exporters.WHO],
    "labels": [r.label for r in p.predict(["Nguyen", "Schmidt"])],
    "torch": "torch" in sys.modules,
    "version": __version__,
}))
"""


def test_an_app_with_its_own_runtime_and_pipeline_embeds_the_predictor_from_the_wheel(wheel, tiny_run, tmp_path):
    _, summary = tiny_run
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    # The base install: numpy, onnxruntime, click, and no torch.
    run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0

    app = tmp_path / "app"
    (app / "runtime").mkdir(parents=True)
    (app / "runtime" / "__init__.py").write_text("WHO = 'app runtime'\n")
    (app / "pipeline.py").write_text("WHO = 'app pipeline'\n")
    (app / "exporters.py").write_text("WHO = 'app exporters'\n")
    (app / "main.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = json.loads(run([str(py), "main.py", summary["bundle"]], cwd=app, env=env).stdout)
    assert res["app"] == ["app runtime", "app pipeline", "app exporters"]
    assert len(res["labels"]) == 2 and res["torch"] is False and res["version"] == "0.1.0"

    # The console command and `python -m seqship.pipeline.cli` both work from inside that app folder.
    for cmd in ([str(venv / "bin" / "pipeline")], [str(py), "-m", "seqship.pipeline.cli"]):
        out = run([*cmd, "predict", "--bundle", summary["bundle"], "Nguyen"], cwd=app, env=env)
        assert json.loads(out.stdout.splitlines()[0])["label"] == res["labels"][0]

    # The old generic names are not installed.
    for name in SIDES:
        code = f"import {name}"
        assert subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, env=env).returncode != 0, name
