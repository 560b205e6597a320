"""The onnxruntime side of `pipeline bench`, run in its own process without torch.

That is how an application runs the predictor, and it keeps torch's idle OpenMP threads (which spin
for a while after each job) from taking cores away from onnxruntime during its measurements.
usage (run by `pipeline bench`, seqship.pipeline.bench.run_bench):

    python -m seqship.pipeline.bench.runtime --bundle DIR --texts-json TEXTS.json --config CONFIG.json --out DIR

--texts-json is a JSON list of texts, --config a BenchConfig as JSON; the figures go to OUT/result.json (as
with --json elsewhere) and the outputs every contender is checked against to OUT/<contender>.npy.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure; the defaults are what pipeline/bench/README.md's figures use."""

    threads: int = 2  # intra-op threads for every contender (torch.set_num_threads, onnxruntime, BLAS)
    latency_texts: int = 300  # texts timed one at a time, per repeat
    bulk_texts: int = 10_000  # texts per bulk repeat (the test set, cycled)
    batch_size: int = 256  # naive padded batches for eager PyTorch and plain onnxruntime
    repeats: int = 5
    warmup: int = 50
    cold_repeats: int = 3
    matmul_n: int = 2048
    atol: float = 1e-5  # outputs must agree with eager PyTorch this closely to be reported
    rtol: float = 1e-5
    check_texts: int = 512  # texts on which every contender's outputs are compared first


def time_each(fn: Callable[[int], object], n: int, cfg: BenchConfig) -> dict:
    """p50 and p99 of single calls fn(0..n-1), in microseconds: medians over repeats, after warm-up."""
    for i in range(min(cfg.warmup, n)):
        fn(i)
    p50s, p99s = [], []
    for _ in range(cfg.repeats):
        times = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn(i)
            times.append((time.perf_counter_ns() - t0) / 1000)
        p50s.append(float(np.percentile(times, 50)))
        p99s.append(float(np.percentile(times, 99)))
    return {"p50_us": statistics.median(p50s), "p99_us": statistics.median(p99s)}


def time_total(fn: Callable[[], object], n_texts: int, cfg: BenchConfig) -> dict:
    """Median seconds of fn() over repeats, after one warm-up call, and the texts per second it means."""
    fn()
    secs = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(secs), "texts_per_s": n_texts / statistics.median(secs)}


def workload(texts: Sequence[str], tok, cfg: BenchConfig):
    """The texts every contender sees: one-at-a-time texts, bulk texts, and naive padded batches."""
    from seqship.runtime.tokenizer import pad_batch

    texts = [t for t in texts if tok.tokens(t)]
    if not texts:
        raise ValueError("no scorable texts to benchmark with")
    bulk = [texts[i % len(texts)] for i in range(cfg.bulk_texts)]
    one = [texts[i % len(texts)] for i in range(cfg.latency_texts)]
    batches = [
        pad_batch([tok.encode(t)[0] for t in bulk[i : i + cfg.batch_size]], tok.spec.pad_id)
        for i in range(0, len(bulk), cfg.batch_size)
    ]
    check = [
        pad_batch([tok.encode(t)[0] for t in bulk[i : i + cfg.batch_size]], tok.spec.pad_id)
        for i in range(0, min(cfg.check_texts, len(bulk)), cfg.batch_size)
    ]
    return texts, one, bulk, batches, check


def measure_onnx(
    bundle_dir: Path, texts: Sequence[str], cfg: BenchConfig, out_dir: Path, expected_sha256: str | None = None
) -> dict:
    """Latency and bulk figures for plain onnxruntime and the Predictor; check outputs saved as .npy."""
    import onnxruntime as ort

    from seqship.runtime.bundle import MODEL_ONNX
    from seqship.runtime.predictor import Predictor

    predictor = Predictor.load(
        bundle_dir, providers="cpu", intra_op_num_threads=cfg.threads, expected_sha256=expected_sha256
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    # the bytes the predictor verified, not the file opened again
    session = ort.InferenceSession(predictor.bundle.data[MODEL_ONNX], so, providers=["CPUExecutionProvider"])
    texts, one, bulk, batches, check = workload(texts, predictor.tokenizer, cfg)
    one_ids = [predictor.tokenizer.encode_batch([t])[:2] for t in one]
    n_check = sum(len(b[1]) for b in check)
    np.save(
        out_dir / "onnxruntime.npy",
        np.concatenate([session.run(["logits"], {"token_ids": a, "lengths": b})[0] for a, b in check]),
    )
    np.save(out_dir / "predictor.npy", predictor.logits(bulk[:n_check]))
    run = session.run
    return {
        "latency": {
            "onnxruntime": time_each(
                lambda i: run(["logits"], {"token_ids": one_ids[i][0], "lengths": one_ids[i][1]}), len(one), cfg
            ),
            "predictor": time_each(lambda i: predictor.predict([one[i]]), len(one), cfg),
        },
        "throughput": {
            "onnxruntime": time_total(
                lambda: [run(["logits"], {"token_ids": a, "lengths": b}) for a, b in batches], len(bulk), cfg
            ),
            "predictor": time_total(lambda: predictor.predict(bulk), len(bulk), cfg),
        },
        "torch_loaded": "torch" in sys.modules,
    }


RESULT = "result.json"  # in --out


def main(argv: list[str] | None = None) -> None:
    """Measure, and write the figures to OUT/result.json."""
    from seqship.pipeline.bench.args import add_bundle, parser

    ap = parser(__doc__)
    add_bundle(ap)
    ap.add_argument("--texts-json", type=Path, required=True, help="A JSON list of the texts to time.")
    ap.add_argument("--config", type=Path, required=True, help="The BenchConfig, as JSON.")
    ap.add_argument("--out", type=Path, required=True, help="Folder for result.json and the outputs (.npy).")
    ap.add_argument("--expect-sha256", default=None, help="The bundle digest to insist on (as `pipeline bench`'s).")
    args = ap.parse_args(argv)
    result = measure_onnx(
        args.bundle,
        json.loads(args.texts_json.read_text()),
        BenchConfig(**json.loads(args.config.read_text())),
        args.out,
        args.expect_sha256,
    )
    (args.out / RESULT).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
