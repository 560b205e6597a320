"""The runtime embeds in apps with only numpy + onnxruntime: no torch, onnx, click or training code."""
import ast
import json
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"
ALLOWED = {"numpy", "onnxruntime", "runtime"} | set(sys.stdlib_module_names)


def test_runtime_sources_import_only_stdlib_numpy_and_onnxruntime():
    found = set()
    for path in RUNTIME.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(a.name.split(".")[0], path.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add((node.module.split(".")[0], path.name))
    assert {(m, f) for m, f in found if m not in ALLOWED} == set()


def test_runtime_loads_a_bundle_and_predicts_with_torch_onnx_and_click_unimportable(tiny_run):
    _, summary = tiny_run
    code = f"""
import sys, json
for name in ("torch", "onnx", "onnxscript", "click", "pipeline", "exporters"):
    sys.modules[name] = None  # any import of them now raises ImportError
from runtime import Predictor
p = Predictor.load({summary["bundle"]!r})
r = p.predict(["Nguyen", "Schmidt"], top_k=3)
print(json.dumps({{"labels": [x.label for x in r], "provider": p.provider,
                  "loaded": sorted(m for m in ("torch", "onnx", "click") if sys.modules.get(m) is not None)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert len(res["labels"]) == 2 and res["provider"] == "CPUExecutionProvider" and res["loaded"] == []
