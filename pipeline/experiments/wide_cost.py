"""What the wide part costs each dataset's default graph on onnxruntime: one text and bulk, with and without it.

    python -m seqship.pipeline.experiments.wide_cost names waimai chnsenticorp shopping-cats sst2 mr

Each dataset's default config (its registry defaults) is built twice with random weights (speed does not depend on
them): the GRU alone and with the wide part (its n-gram range as training picks it, 2^18 buckets), exported as the
`export` stage exports (fused recurrence) and run by onnxruntime on one thread. Timed by the process's CPU time, since
wall time on shared cores is not stable: a text of the test split's median length, then 128-row batches of it, three
rounds with the two graphs interleaved; the medians and their ratios are printed (the issue's targets: one text at
most 1.3x, bulk throughput at least 0.8x).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# dataset: (vocabulary size, labels, wide n-grams, median test length in tokens), as the default runs have them
SHAPES = {
    "names": (60, 18, 4, 7),
    "waimai": (2500, 2, 4, 17),
    "chnsenticorp": (3500, 2, 3, 87),
    "shopping-cats": (5000, 10, 3, 35),
    "sst2": (15000, 2, 2, 20),
    "mr": (10000, 2, 2, 23),
}


def session(dataset: str, wide_ngrams: int, folder: Path):
    import onnxruntime as ort
    import torch

    from seqship.exporters.contract import ModelContract
    from seqship.exporters.onnx import export_onnx
    from seqship.exporters.recurrent import fused_recurrence
    from seqship.pipeline.config import train_config
    from seqship.pipeline.model import TextClassifier
    from seqship.pipeline.train import model_config

    vocab, labels, _, _ = SHAPES[dataset]
    cfg = model_config(train_config({"seed": 0}, dataset), vocab, labels, wide_ngrams=wide_ngrams)
    torch.manual_seed(0)
    model = TextClassifier(cfg).eval()
    path = folder / f"{dataset}-{wide_ngrams}.onnx"
    with fused_recurrence(model):
        export_onnx(model, path, ModelContract(num_labels=labels), (torch.randint(2, 20, (2, 7)), torch.tensor([7, 3])))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_seconds(sess, ids: np.ndarray, lengths: np.ndarray, runs: int) -> float:
    feed = {"token_ids": ids, "lengths": lengths}
    for _ in range(20):
        sess.run(None, feed)
    start = time.process_time()
    for _ in range(runs):
        sess.run(None, feed)
    return (time.process_time() - start) / runs


def main(datasets: list[str]) -> int:
    unknown = [d for d in datasets if d not in SHAPES]
    if unknown or not datasets:
        print(f"usage: wide_cost DATASET ... (of {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="seqship-wide-cost-") as tmp:
        for d in datasets:
            vocab, _, ngrams, length = SHAPES[d]
            graphs = {"GRU alone": session(d, 0, Path(tmp)), "with the wide part": session(d, ngrams, Path(tmp))}
            rng = np.random.default_rng(0)
            one = (rng.integers(1, vocab, (1, length)), np.array([length]))
            bulk = (rng.integers(1, vocab, (128, length)), np.full(128, length))
            one_text = {k: [] for k in graphs}
            per_text = {k: [] for k in graphs}
            for _ in range(3):
                for name, sess in graphs.items():
                    one_text[name].append(cpu_seconds(sess, *one, 400) * 1e6)
                    per_text[name].append(cpu_seconds(sess, *bulk, 10) / 128 * 1e6)
            a, b = (statistics.median(one_text[k]) for k in graphs), (statistics.median(per_text[k]) for k in graphs)
            (a0, a1), (b0, b1) = a, b
            print(
                f"{d} ({length} tokens): one text {a0:.0f} -> {a1:.0f} us ({a1 / a0:.2f}x); "
                f"bulk {b0:.1f} -> {b1:.1f} us a text ({b0 / b1:.2f}x throughput)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
