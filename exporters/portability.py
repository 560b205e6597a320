"""The multi-engine parity gate: the same model.onnx, run in every ONNX engine found, against PyTorch.

Each engine runs in its own process (`python -m seqship.exporters.engine_worker`, or Node for onnxruntime-node
and onnxruntime-web's WebAssembly build): an engine that crashes (tract aborts the process on some
inputs) is reported as a failure instead of taking the gate down with it. Every engine gets the same
batches: the gate's probes (T=1, a long row, a ragged padded batch, real texts), each ragged row alone
(padded row == row alone), and the whole test set in padded, length-sorted batches (label agreement).

Label agreement allows for near ties: where the reference's top two logits are within twice the
tolerance of each other, either label is a legitimate answer of a correct engine, so such rows are
counted and reported separately, and only the others must agree.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from seqship.exporters.parity import Backend, Probe, compare
from seqship.runtime.tokenizer import pad_batch

log = logging.getLogger(__name__)

PYTHON_ENGINES = ("onnxruntime", "onnx.reference", "openvino", "tract")
JS_ENGINES = ("onnxruntime-node", "onnxruntime-web")
JS_DIR = Path(__file__).resolve().parent.parent / "runtime" / "js"
TEST_BATCH = 256
NEAR_TIE_SCALE = 100.0  # the largest |logit| that widens the near-tie margin (real models: up to ~30)
ENGINE_TIMEOUT_S = 600


def near_ties(reference: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Rows whose top-2 reference logits are so close that an engine within tolerance may swap them."""
    if reference.shape[1] < 2:
        return np.zeros(len(reference), dtype=bool)
    top2 = np.sort(reference.astype(np.float64), axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    # Each of the two may move by atol + rtol * |logit| (float32 error grows with the numbers), but |logit|
    # is capped at NEAR_TIE_SCALE: softmax cannot see a per-row shift, so a model whose logits are all
    # around 1e6 must not make every row a near tie (rtol * |logit| would be 10 there).
    tol = atol + rtol * np.minimum(np.abs(top2).max(axis=1), NEAR_TIE_SCALE)
    return gap <= 2 * tol


def label_agreement(reference: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict:
    """Labels must agree on every row that is not a near tie; near ties are counted apart."""
    ties = near_ties(reference, atol, rtol)
    same = reference.argmax(1) == got.argmax(1)
    decided = ~ties
    return {
        "rows": int(len(reference)),
        "near_ties": int(ties.sum()),
        "near_tie_flips": int((ties & ~same).sum()),
        "agreement_outside_near_ties": float(same[decided].mean()) if decided.any() else 1.0,
        "disagreements_outside_near_ties": [int(i) for i in np.flatnonzero(decided & ~same)[:20]],
        "passed": bool(same[decided].all()),
    }


def _batches(probes: Sequence[Probe], test_ids: list[list[int]], pad_id: int) -> tuple[list[dict], dict]:
    """Every input the engines run, and where each part of the gate finds its rows."""
    batches, index = [], {"probes": [], "singles": [], "test": []}
    for p in probes:
        index["probes"].append(len(batches))
        batches.append({"name": p.name, "ids": p.token_ids, "lengths": p.lengths})
    ragged = next((p for p in probes if p.name == "ragged"), None)
    if ragged is not None:
        for i, n in enumerate(ragged.lengths):
            index["singles"].append(len(batches))
            batches.append(
                {
                    "name": f"ragged[{i}] alone",
                    "ids": ragged.token_ids[i : i + 1, :n],
                    "lengths": ragged.lengths[i : i + 1],
                }
            )
    order = np.argsort([len(r) for r in test_ids], kind="stable")
    for start in range(0, len(order), TEST_BATCH):
        idx = order[start : start + TEST_BATCH]
        ids, lengths = pad_batch([test_ids[i] for i in idx], pad_id)
        index["test"].append((len(batches), idx))
        batches.append({"name": f"test[{start}:{start + len(idx)}]", "ids": ids, "lengths": lengths})
    return batches, index


def _run_python_engine(name: str, model: Path, batches: list[dict], work: Path) -> dict:
    inp, out = work / f"{name}.in.json", work / f"{name}.out.npz"
    inp.write_text(
        json.dumps({"batches": [{"ids": b["ids"].tolist(), "lengths": b["lengths"].tolist()} for b in batches]})
    )
    cmd = [sys.executable, "-m", "seqship.exporters.engine_worker", name, str(model), str(inp), str(out)]
    return _run(cmd, out, name)


def js_engine_unavailable(name: str, js_dir: str | os.PathLike | None = None) -> str | None:
    """Why a JavaScript engine cannot run here, with the command that adds it; None when it can."""
    js_dir = Path(js_dir) if js_dir is not None else JS_DIR
    npm_ci = f"npm ci --prefix {'runtime/js' if js_dir == JS_DIR else js_dir} --ignore-scripts"
    if shutil.which("node") is None:
        return f"node is not installed: add Node.js 18+ and the engine with `sudo apt-get install -y nodejs npm && {npm_ci}`"
    package = js_dir / "node_modules" / name
    if not package.is_dir():
        return f"{package} is missing: add it with `{npm_ci}`"
    return None


def _run_js_engine(name: str, model: Path, batches: list[dict], work: Path, js_dir: Path | None = None) -> dict:
    backend = {"onnxruntime-node": "node", "onnxruntime-web": "wasm"}[name]
    why = js_engine_unavailable(name, js_dir)
    if why is not None:
        return {"skipped": why}
    js_dir = js_dir if js_dir is not None else JS_DIR
    inp, out = work / f"{name}.in.json", work / f"{name}.out.json"
    inp.write_text(
        json.dumps({"batches": [{"ids": b["ids"].tolist(), "lengths": b["lengths"].tolist()} for b in batches]})
    )
    cmd = ["node", str(js_dir / "tools" / "engine_run.mjs"), backend, str(model), str(inp), str(out)]
    return _run(cmd, out, name)


def _run(cmd: list[str], out: Path, name: str) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {"error": f"{name} did not finish within {ENGINE_TIMEOUT_S} s"}
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = next(
            (line for line in tail if "Error" in line or "error" in line or "panicked" in line),
            tail[-1] if tail else "",
        )
        return {"error": f"{name} exited with {proc.returncode}: {reason[:400]}"}
    if out.suffix == ".npz":
        with np.load(out, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if "skipped" in meta or "error" in meta:
                return meta
            return meta | {"logits": [z[f"b{i}"] for i in range(meta["batches"])]}
    data = json.loads(out.read_text())
    if "skipped" in data or "error" in data:
        return data
    return data | {"logits": [np.asarray(b, dtype=np.float32).reshape(len(b), -1) for b in data["logits"]]}


def engine_gate(
    model: str | os.PathLike,
    reference: Backend,
    probes: Sequence[Probe],
    test_ids: list[list[int]],
    pad_id: int,
    atol: float,
    rtol: float,
    engines: Sequence[str] | None = None,
    js_dir: str | os.PathLike | None = None,
) -> dict:
    """Run `model` in every engine and compare with `reference`: per engine loads, dynamic shapes,
    max abs/rel difference, padded == alone, label agreement (outside near ties). An engine that is not
    installed is listed under "skipped" with the command that adds it. `js_dir`: the folder whose
    node_modules holds the JavaScript engines (default: the checkout's runtime/js)."""
    model = Path(model).resolve()  # the engines run in worker processes whose working folder is the checkout
    batches, index = _batches(probes, test_ids, pad_id)
    ref = [reference(b["ids"], b["lengths"]) for b in batches]
    shapes = sorted({tuple(b["ids"].shape) for b in batches})
    results, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="seqship-engines-") as tmp:
        for name in engines or PYTHON_ENGINES + JS_ENGINES:
            if name in JS_ENGINES:
                got = _run_js_engine(name, model, batches, Path(tmp), Path(js_dir) if js_dir is not None else None)
            else:
                got = _run_python_engine(name, model, batches, Path(tmp))
            if "skipped" in got:
                skipped.append({"engine": name, "reason": got["skipped"]})
                continue
            results.append(_judge(name, got, batches, index, ref, shapes, atol, rtol))
    return {
        "engines": results,
        "skipped": skipped,
        "shapes": len(shapes),
        "passed": all(r["passed"] for r in results),
    }


def _judge(name, got, batches, index, ref, shapes, atol, rtol) -> dict:
    entry = {"engine": name, "version": got.get("version"), "settings": got.get("settings")}
    if "error" in got:
        return entry | {"loads": False, "passed": False, "error": got["error"]}
    logits = got["logits"]
    wrong = [
        f"{batches[i]['name']}: shape {list(np.shape(g))}, expected {list(r.shape)}"
        for i, (g, r) in enumerate(zip(logits, ref))
        if np.shape(g) != r.shape
    ]
    if wrong or len(logits) != len(ref):
        return entry | {
            "loads": True,
            "passed": False,
            "max_abs": None,
            "max_rel": None,
            "padded_vs_alone_max_abs": None,
            "labels": None,
            "problems": wrong[:3] or [f"{len(logits)} results for {len(ref)} batches"],
        }
    per_part = {}
    probe_stats = [compare(ref[i], logits[i], atol, rtol) | {"probe": batches[i]["name"]} for i in index["probes"]]
    per_part["probes"] = probe_stats
    if index["singles"]:
        ragged = next(i for i in index["probes"] if batches[i]["name"] == "ragged")
        alone = np.concatenate([logits[i] for i in index["singles"]])
        per_part["padded_vs_alone"] = compare(alone, logits[ragged], atol, rtol)
    labels = None
    if index["test"]:
        n = sum(len(idx) for _, idx in index["test"])
        r_all = np.empty((n, ref[0].shape[1]), dtype=np.float32)
        g_all = np.empty_like(r_all)
        for i, idx in index["test"]:
            r_all[idx], g_all[idx] = ref[i], logits[i]
        per_part["test_set"] = compare(r_all, g_all, atol, rtol)
        labels = label_agreement(r_all, g_all, atol, rtol)
    checks = probe_stats + [per_part[k] for k in ("padded_vs_alone", "test_set") if k in per_part]
    finite = [c for c in checks if "max_abs" in c]
    passed = all(c["passed"] for c in checks) and (labels is None or labels["passed"])
    problems = [c["error"] for c in checks if "error" in c]
    if labels is not None and not labels["passed"]:
        problems.append(f"labels differ outside near ties on rows {labels['disagreements_outside_near_ties'][:5]}")
    return entry | {
        "loads": True,
        "dynamic_shapes": f"{len(shapes)} shapes in one session",
        "max_abs": max((c["max_abs"] for c in finite), default=None),
        "max_rel": max((c["max_rel"] for c in finite), default=None),
        "padded_vs_alone_max_abs": per_part.get("padded_vs_alone", {}).get("max_abs"),
        "labels": labels,
        "checks": per_part,
        "problems": problems,
        "passed": bool(passed),
    }


def format_engines(gate: dict) -> str:
    """One line per engine, for people."""
    head = f"{'engine':<18} {'version':<12} {'loads':<5} {'max_abs':>9} {'max_rel':>9} {'pad==alone':>10} {'labels':>8} {'near-ties':>9}  result"
    lines = [head, "-" * len(head)]
    for r in gate["engines"]:
        if not r["loads"]:
            lines.append(f"{r['engine']:<18} {str(r['version']):<12} {'no':<5} {r['error']}  FAIL")
            continue
        lab = r["labels"] or {}
        agree = f"{lab['agreement_outside_near_ties']:.2%}" if lab else "-"
        ties = f"{lab['near_ties']} ({lab['near_tie_flips']} flip)" if lab else "-"

        def num(v, width):
            return f"{'-' if v is None else format(v, '.2e'):>{width}}"

        lines.append(
            f"{r['engine']:<18} {str(r['version']):<12} {'yes':<5} {num(r['max_abs'], 9)} {num(r['max_rel'], 9)} "
            f"{num(r['padded_vs_alone_max_abs'], 10)} {agree:>8} {ties:>9}  {'ok' if r['passed'] else 'FAIL'}"
        )
        if not r["passed"] and r.get("problems"):
            lines.append(f"{'':<18} ^ {'; '.join(r['problems'])[:300]}")
    for s in gate["skipped"]:
        lines.append(f"{s['engine']:<18} skipped: {s['reason']}")
    return "\n".join(lines)
