"""The runtime embeds in apps with only numpy + onnxruntime: no torch, onnx, click or build-side code.

The core (load, verify, tokenize, score, read files) imports the standard library, numpy and onnxruntime.
The optional parts (the server, the Ray scorer, the demo) import their extras inside functions, so that
importing them costs nothing, and never import the build side (`seqship.pipeline`, `seqship.exporters`).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
CORE_DEPS = {"numpy", "onnxruntime"} | set(sys.stdlib_module_names)
# Each optional part's extra (pyproject.toml), importable only inside its functions.
OPTIONAL = {
    "serve": {"starlette", "uvicorn", "prometheus_client", "httptools", "uvloop", "grpc", "google"},
    "ray.py": {"ray", "pyarrow"},
    "demo.py": set(),
}
EXTRAS = set().union(*OPTIONAL.values())
BUILD_SIDE = ("torch", "onnx", "onnxscript", "click", "sklearn", "seqship.pipeline", "seqship.exporters")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every absolute import in a file."""
    tree = ast.parse(path.read_text())
    in_function = {
        id(inner)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) not in in_function) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, id(node) not in in_function))
    return found


def part_of(path: Path) -> str | None:
    rel = path.relative_to(RUNTIME)
    return rel.parts[0] if rel.parts[0] in OPTIONAL else None


def test_every_runtime_import_is_core_or_a_lazy_extra():
    wrong = []
    files = sorted(p for p in RUNTIME.rglob("*.py") if "node_modules" not in p.parts)
    assert {p.name for p in files} >= {"predictor.py", "bulk.py", "textio.py", "ray.py", "demo.py"}
    assert any(p.parent.name == "serve" for p in files)
    for path in files:
        part = part_of(path)
        for module, top_level in imports(path):
            root = module.split(".")[0]
            if any(module == b or module.startswith(b + ".") for b in BUILD_SIDE):
                wrong.append(f"{path.relative_to(RUNTIME)} imports {module} (build side)")
            elif module == "seqship" or module.startswith("seqship."):
                if not module.startswith("seqship.runtime"):
                    wrong.append(f"{path.relative_to(RUNTIME)} imports {module}")
            elif root in CORE_DEPS:
                continue
            elif part is not None and root in OPTIONAL[part] and not top_level:
                continue
            else:
                where = "at module level" if top_level else "in a function"
                wrong.append(f"{path.relative_to(RUNTIME)} imports {module} {where}")
    assert wrong == []


RUN_WITH_BLOCKED = """
import importlib, json, pkgutil, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # any import of them now raises ImportError
import seqship.runtime
mods = sorted(m.name for m in pkgutil.walk_packages(seqship.runtime.__path__, "seqship.runtime."))
for m in mods:
    importlib.import_module(m)
out = {"modules": mods}
if len(sys.argv) > 2:
    from seqship.runtime import Predictor
    p = Predictor.load(sys.argv[2])
    out["labels"] = [x.label for x in p.predict(["Nguyen", "Schmidt"], top_k=3)]
    out["provider"] = p.provider
out["loaded"] = sorted(m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] in
                       ("torch", "onnx", "click", "starlette", "uvicorn", "ray", "pyarrow"))
out["build_side"] = sorted(m for m in sys.modules if sys.modules[m] is not None
                          and m.startswith(("seqship.pipeline", "seqship.exporters")))
print(json.dumps(out))
"""


def run_blocked(blocked, *args):
    out = subprocess.run(
        [sys.executable, "-c", RUN_WITH_BLOCKED, ",".join(blocked), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_runtime_module_imports_without_its_extras_or_the_build_side():
    # Importing the server, Ray and demo modules needs none of their extras: an app that embeds the
    # predictor never pays for (or needs) starlette or ray.
    res = run_blocked([*BUILD_SIDE, *sorted(EXTRAS), "pyarrow.parquet", "ray.data"])
    assert {"seqship.runtime.ray", "seqship.runtime.demo", "seqship.runtime.bulk"} <= set(res["modules"])
    assert any(m.startswith("seqship.runtime.serve.") for m in res["modules"])
    assert res["loaded"] == [] and res["build_side"] == []


def test_runtime_loads_a_bundle_and_predicts_with_the_build_side_unimportable(tiny_run):
    _, summary = tiny_run
    res = run_blocked(BUILD_SIDE, summary["bundle"])
    assert len(res["labels"]) == 2 and res["provider"] == "CPUExecutionProvider"
    assert res["loaded"] == [] and res["build_side"] == []


def test_the_checkouts_folders_do_not_import_under_their_bare_names():
    # From the repository root, `runtime/` would import as a second copy of the code (its errors are other
    # classes than seqship.runtime's): the old names fail there too, saying the one that works.
    for side in ("runtime", "pipeline", "exporters"):
        out = subprocess.run(
            [sys.executable, "-c", f"import {side}"], cwd=RUNTIME.parent, capture_output=True, text=True
        )
        assert out.returncode != 0 and f"imports as seqship.{side}, not {side}" in out.stderr, out.stderr
