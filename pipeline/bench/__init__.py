"""`pipeline bench`: the bundle's model against the alternatives a user would pick, measured in one run.

Every figure is taken after warm-up, as the median over repeats; every contender gets the same thread
budget; a contender whose outputs differ from eager PyTorch is refused, not reported. Ratios are
computed from this run's own numbers only (absolute times on shared machines are noise).

usage (the `pipeline bench` command; see `pipeline bench --help`):

    pipeline bench --bundle DIR [--texts FILE] [--threads N] [--repeats N] [--json]

The other benchmarks are modules of this package, run as `python -m seqship.pipeline.bench.<name>` with
the same flags for the same things (pipeline.bench.args): serve (the HTTP server under load), ray (bulk
scoring on Ray against local), threads (training on a busy machine), graphs (two exported graphs'
speed), runtime (the onnxruntime side of this one, in a process without torch).
"""

from __future__ import annotations

import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from seqship.pipeline.bench.runtime import RESULT, BenchConfig, time_each, time_total, workload
from seqship.pipeline.runs import STAGES, TOKENIZER, run_of_bundle
from seqship.runtime.bundle import MODEL_TORCHSCRIPT, open_bundle
from seqship.runtime.errors import SeqshipError
from seqship.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TARGETS = {
    # issue 29: one text in 45 us, 5x TorchScript; bulk 3.5x TorchScript (both on its padded batches of 256)
    "latency_one.predictor_p50_us": ("<=", 45.0),
    "latency_one.predictor_speedup_vs_torchscript": (">=", 5.0),
    "throughput_bulk.predictor_vs_torchscript": (">=", 3.5),
    "latency_one.predictor_speedup_vs_eager": (">=", 5.0),
    "throughput_bulk.predictor_vs_eager": (">=", 3.0),
    "throughput_bulk.predictor_vs_ort_padded": (">=", 1.5),
    "cold_start.wall_fraction": ("<=", 0.15),
    "cold_start.rss_fraction": ("<=", 0.25),
    "efficiency.fraction_of_matmul_peak": (">=", 0.40),
}


def scripted_from_bundle(bundle) -> torch.jit.ScriptModule:
    """model.pt from the bytes open_bundle hashed (keep=(MODEL_TORCHSCRIPT,)), never the file opened again."""
    import torch

    return torch.jit.load(io.BytesIO(bundle.data[MODEL_TORCHSCRIPT]), map_location="cpu")


def eager_from_bundle(bundle) -> torch.nn.Module:
    """The eager model rebuilt from the bundle alone: config from the manifest, weights from model.pt."""
    from seqship.pipeline.model import ModelConfig, TextClassifier

    model = TextClassifier(ModelConfig(**bundle.manifest["model"]))
    scripted = scripted_from_bundle(bundle)
    model.load_state_dict(scripted.state_dict(), strict=True)
    return model.eval()


def flops_per_text(model_cfg: dict, tokens: int) -> float:
    """Matrix-multiply FLOPs of one text with `tokens` real tokens (padding excluded; 2 per multiply-add)."""
    gates = {"gru": 3, "lstm": 4, "rnn": 1}[model_cfg["cell"]]
    h, e, d = model_cfg["hidden_dim"], model_cfg["embed_dim"], 2 if model_cfg["bidirectional"] else 1
    per_token = 0.0
    for layer in range(model_cfg["num_layers"]):
        i = e if layer == 0 else d * h
        per_token += d * 2 * gates * h * (i + h)  # input and recurrent projections, every direction
    return per_token * tokens + 2 * d * h * model_cfg["num_labels"]


def agreement(reference: np.ndarray, outputs: dict[str, np.ndarray], atol: float, rtol: float) -> dict[str, str | None]:
    """None for a contender that matches the reference, else why it is refused."""
    verdict = {}
    for name, got in outputs.items():
        if got.shape != reference.shape:
            verdict[name] = f"output shape {list(got.shape)} != {list(reference.shape)}"
            continue
        diff = np.abs(got.astype(np.float64) - reference)
        bad = diff > atol + rtol * np.abs(reference)
        verdict[name] = f"outputs differ from eager PyTorch (max |diff| {diff.max():.2e})" if bad.any() else None
    return verdict


COLD_PREDICTOR = """
import sys, time
from seqship.runtime import Predictor
p = Predictor.load(
    sys.argv[1], providers="cpu", intra_op_num_threads=int(sys.argv[3]), expected_sha256=sys.argv[4] or None
)
label = p.predict([sys.argv[2]])[0].label
"""
# The PyTorch contender runs the bytes the parent verified (the manifest, pinned, names their sha256): each
# file is read once, hashed, and loaded from those bytes, never re-opened by path.
COLD_TORCH = """
import hashlib, io, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
from seqship.runtime.tokenizer import Tokenizer, TokenizerSpec
def verified(name, sha256):
    data = open(sys.argv[1] + "/" + name, "rb").read()
    if hashlib.sha256(data).hexdigest() != sha256:
        sys.exit(f"BundleError: {name}: its sha256 no longer matches the verified manifest (changed since)")
    return data
model_sha, tok_sha = sys.argv[4].split(",")
m = torch.jit.load(io.BytesIO(verified("MODEL_TORCHSCRIPT", model_sha)), map_location="cpu")
tok = Tokenizer(TokenizerSpec.from_json(verified("TOKENIZER", tok_sha).decode("utf-8")))
ids, lengths, _ = tok.encode_batch([sys.argv[2]])
with torch.inference_mode():
    label = int(m(torch.from_numpy(ids), torch.from_numpy(lengths)).argmax())
""".replace("MODEL_TORCHSCRIPT", MODEL_TORCHSCRIPT).replace("TOKENIZER", TOKENIZER)
PEAK_RSS = '\nprint("PEAK_KB", next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])\n'


def _cold(script: str, bundle_dir: Path, text: str, cfg: BenchConfig, pin: str | None = None) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(cfg.threads),
        MKL_NUM_THREADS=str(cfg.threads),
        OPENBLAS_NUM_THREADS=str(cfg.threads),
    )
    walls, rss = [], []
    for _ in range(cfg.cold_repeats):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", script + PEAK_RSS, str(bundle_dir), text, str(cfg.threads), pin or ""],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        walls.append(time.perf_counter() - t0)
        if out.returncode != 0:  # its last line says why (a BundleError: the bundle changed since it was verified)
            why = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise SeqshipError(f"bench: a cold-start process failed: {why[:400]}")
        rss.append(int(out.stdout.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024)
    return {"wall_s": statistics.median(walls), "peak_rss_mib": statistics.median(rss)}


MATMUL = """
import sys, time, numpy as np
n = int(sys.argv[1]); a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32); b = a.T.copy()
a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(2 * n ** 3 / best)
"""


def matmul_peak(cfg: BenchConfig) -> float:
    """This machine's practical float32 peak: a large numpy matrix product with the same thread budget."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(cfg.threads),
        MKL_NUM_THREADS=str(cfg.threads),
        OPENBLAS_NUM_THREADS=str(cfg.threads),
    )
    out = subprocess.run(
        [sys.executable, "-c", MATMUL, str(cfg.matmul_n)], capture_output=True, text=True, env=env, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"matmul peak measurement failed: {out.stderr[-500:]}")
    return float(out.stdout.strip())


def stage_seconds(bundle_dir: Path) -> dict | None:
    """Stage times of the run that made this bundle, if the bundle is in its run folder."""
    run = run_of_bundle(bundle_dir)
    out = {}
    for name in STAGES:
        seconds = (run.record(name) or {}).get("seconds")
        if seconds is None:
            return None
        out[name] = seconds
    return out


def bench_texts(bundle_dir: Path, texts_path: Path | None = None) -> list[str]:
    """The texts to time: the file's lines, else the test split of the run the bundle was packaged in."""
    from seqship.pipeline.predict import read_texts

    if texts_path is not None:
        texts = read_texts(texts_path)
    else:
        test = run_of_bundle(bundle_dir).split_path("test")
        if not test.is_file():
            raise SeqshipError(f"{test}: not found; pass --texts FILE (one text per line)")
        from seqship.pipeline.data import read_split

        texts = [t for t, _ in read_split(test.parent, "test")]
    if not texts:
        raise SeqshipError(f"{texts_path or test}: no texts to time; pass --texts FILE with one text per line")
    return texts


def run_bench(
    bundle_dir: Path,
    texts: Sequence[str],
    cfg: BenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    expected_sha256: str | None = None,
) -> dict:
    """Measure every figure; returns the JSON-ready result (see pipeline/bench/README.md). expected_sha256:
    the bundle digest to insist on, in this process and in every process the benchmark starts."""
    import torch

    from seqship.runtime.tokenizer import TokenizerSpec

    bundle = open_bundle(bundle_dir, expected_sha256, keep=(MODEL_TORCHSCRIPT,))
    spec = TokenizerSpec.from_json(bundle.data[TOKENIZER].decode("utf-8"), source=str(bundle.path(TOKENIZER)))
    tok = Tokenizer(spec)
    texts, one, bulk, batches, check = workload(texts, tok, cfg)

    progress("onnxruntime and the predictor, in a process without torch")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "texts.json").write_text(json.dumps(texts, ensure_ascii=False))
        (tmp / "cfg.json").write_text(json.dumps(asdict(cfg)))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "seqship.pipeline.bench.runtime",
                "--bundle",
                str(bundle.root),
                "--texts-json",
                str(tmp / "texts.json"),
                "--config",
                str(tmp / "cfg.json"),
                "--out",
                str(tmp),
                *(["--expect-sha256", expected_sha256] if expected_sha256 else []),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if out.returncode != 0:
            raise RuntimeError(f"the onnxruntime benchmark process failed: {out.stderr[-800:]}")
        onnx_side = json.loads((tmp / RESULT).read_text())
        outputs = {name: np.load(tmp / f"{name}.npy") for name in ("onnxruntime", "predictor")}

    progress("eager PyTorch and TorchScript")
    torch.set_num_threads(cfg.threads)
    eager = eager_from_bundle(bundle)
    scripted = scripted_from_bundle(bundle)

    def torch_run(model, a, b):
        with torch.inference_mode():
            return model(a, b)

    # Exactness first: a contender that computes something else is refused, whatever its speed.
    ref = np.concatenate([torch_run(eager, torch.from_numpy(a), torch.from_numpy(b)).numpy() for a, b in check]).astype(
        np.float64
    )
    outputs["torchscript"] = np.concatenate(
        [torch_run(scripted, torch.from_numpy(a), torch.from_numpy(b)).numpy() for a, b in check]
    )
    refused = agreement(ref, outputs, cfg.atol, cfg.rtol)
    one_t = [tuple(torch.from_numpy(x) for x in tok.encode_batch([t])[:2]) for t in one]
    batches_t = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in batches]

    def entry(name: str, figure: dict | Callable[[], dict]) -> dict:
        if refused.get(name):
            return {"refused": refused[name]}
        return figure() if callable(figure) else figure

    latency = {
        "eager": time_each(lambda i: torch_run(eager, *one_t[i]), len(one), cfg),
        "torchscript": entry("torchscript", lambda: time_each(lambda i: torch_run(scripted, *one_t[i]), len(one), cfg)),
        "onnxruntime": entry("onnxruntime", onnx_side["latency"]["onnxruntime"]),
        "predictor": entry("predictor", onnx_side["latency"]["predictor"]),
    }
    throughput = {
        "eager": time_total(lambda: [torch_run(eager, a, b) for a, b in batches_t], len(bulk), cfg),
        "torchscript": entry(
            "torchscript", lambda: time_total(lambda: [torch_run(scripted, a, b) for a, b in batches_t], len(bulk), cfg)
        ),
        "onnxruntime": entry("onnxruntime", onnx_side["throughput"]["onnxruntime"]),
        "predictor": entry("predictor", onnx_side["throughput"]["predictor"]),
    }
    progress("cold start, fresh processes")
    files = bundle.manifest["files"]
    torch_files = f"{files[MODEL_TORCHSCRIPT]['sha256']},{files[TOKENIZER]['sha256']}"
    cold = {
        "predictor": _cold(COLD_PREDICTOR, bundle.root, one[0], cfg, expected_sha256),
        "pytorch": _cold(COLD_TORCH, bundle.root, one[0], cfg, torch_files),
    }
    progress("matrix-product peak")
    peak = matmul_peak(cfg)
    tokens = [len(tok.encode(t)[0]) for t in bulk]
    flops = sum(flops_per_text(bundle.manifest["model"], n) for n in tokens)
    pred_tp = throughput["predictor"]
    achieved = flops / pred_tp["seconds"] if "seconds" in pred_tp else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    def get(d: dict, key: str):
        return d.get(key) if isinstance(d, dict) else None

    result = {
        "bundle": str(bundle.root),
        "threads": cfg.threads,
        "config": asdict(cfg),
        "texts": {
            "distinct": len(texts),
            "latency": len(one),
            "bulk": len(bulk),
            "mean_tokens": float(np.mean(tokens)),
        },
        "latency_one": {
            "contenders": latency,
            "predictor_p50_us": get(latency["predictor"], "p50_us"),
            "ratios": {
                "predictor_speedup_vs_torchscript": ratio(
                    get(latency["torchscript"], "p50_us"), get(latency["predictor"], "p50_us")
                ),
                "predictor_speedup_vs_eager": ratio(latency["eager"]["p50_us"], get(latency["predictor"], "p50_us")),
                "onnxruntime_speedup_vs_eager": ratio(
                    latency["eager"]["p50_us"], get(latency["onnxruntime"], "p50_us")
                ),
                "torchscript_speedup_vs_eager": ratio(
                    latency["eager"]["p50_us"], get(latency["torchscript"], "p50_us")
                ),
            },
        },
        "throughput_bulk": {
            "contenders": throughput,
            "ratios": {
                "predictor_vs_torchscript": ratio(
                    get(throughput["predictor"], "texts_per_s"), get(throughput["torchscript"], "texts_per_s")
                ),
                "predictor_vs_eager": ratio(
                    get(throughput["predictor"], "texts_per_s"), throughput["eager"]["texts_per_s"]
                ),
                "predictor_vs_ort_padded": ratio(
                    get(throughput["predictor"], "texts_per_s"), get(throughput["onnxruntime"], "texts_per_s")
                ),
                "ort_padded_vs_eager": ratio(
                    get(throughput["onnxruntime"], "texts_per_s"), throughput["eager"]["texts_per_s"]
                ),
            },
        },
        "cold_start": {
            "contenders": cold,
            "ratios": {
                "wall_fraction": cold["predictor"]["wall_s"] / cold["pytorch"]["wall_s"],
                "rss_fraction": cold["predictor"]["peak_rss_mib"] / cold["pytorch"]["peak_rss_mib"],
            },
        },
        "efficiency": {
            "useful_flops": flops,
            "achieved_flops_per_s": achieved,
            "matmul_peak_flops_per_s": peak,
            "fraction_of_matmul_peak": ratio(achieved, peak),
        },
        "stage_seconds": stage_seconds(bundle.root),
        "refused": {k: v for k, v in refused.items() if v},
    }
    result["targets"] = check_targets(result)
    return result


def check_targets(result: dict) -> dict:
    """Each target of the performance issue, the measured value, and whether it is met."""
    out = {}
    for path, (op, goal) in TARGETS.items():
        section, key = path.split(".")
        value = result[section].get("ratios", {}).get(key, result[section].get(key))
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out[path] = {"target": f"{op} {goal}", "value": value, "met": met}
    return out


def format_report(r: dict) -> str:
    """The benchmark as a table for people."""
    lines = [
        f"bundle {r['bundle']}; {r['threads']} threads for every contender; "
        f"{r['texts']['distinct']} distinct texts, mean {r['texts']['mean_tokens']:.1f} tokens"
    ]
    lines.append("\nlatency, one text           p50 (us)    p99 (us)")
    for name, v in r["latency_one"]["contenders"].items():
        lines.append(
            f"  {name:<24} " + (f"{v['p50_us']:>10.1f}  {v['p99_us']:>10.1f}" if "p50_us" in v else v["refused"])
        )
    lines.append(f"\nbulk, {r['texts']['bulk']} texts            texts/s")
    for name, v in r["throughput_bulk"]["contenders"].items():
        label = {
            "eager": "eager (padded 256)",
            "torchscript": "torchscript (padded 256)",
            "onnxruntime": "onnxruntime (padded 256)",
            "predictor": "predictor (own batching)",
        }[name]
        lines.append(f"  {label:<24} " + (f"{v['texts_per_s']:>10.0f}" if "texts_per_s" in v else v["refused"]))
    lines.append("\ncold start (fresh process)    wall (s)   peak RSS (MiB)")
    for name, v in r["cold_start"]["contenders"].items():
        lines.append(f"  {name:<24} {v['wall_s']:>10.2f}  {v['peak_rss_mib']:>12.1f}")
    e = r["efficiency"]
    if e["achieved_flops_per_s"]:
        lines.append(
            f"\nefficiency: {e['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s useful (real tokens only) vs "
            f"{e['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s numpy matmul peak = {e['fraction_of_matmul_peak']:.1%}"
        )
    if r["stage_seconds"]:
        lines.append("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items()))
    lines.append("\ntargets")
    for name, t in r["targets"].items():
        val = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  {name:<45} {val:>8}  (target {t['target']})  {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)
