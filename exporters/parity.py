"""The parity gate: do the exports compute what eager PyTorch computes, at every shape that matters?

Element-wise test with numpy `allclose` semantics, |got - ref| <= atol + rtol * |ref| (as Polygraphy and
Optimum use): float32 error grows with the size of the numbers computed. Relative error alone is
meaningless near zero logits, so both are reported and the absolute-plus-relative bound decides. A model
whose logits are all huge (an adversarial review shifted every logit by 1e6) earns a wide bound here, so
labels are judged separately with a margin that does not grow with them (portability.near_ties). Every
failure is collected; nothing stops at the first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from seqship.runtime.predictor import Predictor
from seqship.runtime.tokenizer import pad_batch

log = logging.getLogger(__name__)

Backend = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (token_ids [B,T], lengths [B]) -> logits [B,C]


@dataclass(frozen=True)
class Probe:
    """A named input batch the gate runs through every backend."""

    name: str
    token_ids: np.ndarray  # int64 [B, T], right-padded
    lengths: np.ndarray  # int64 [B]
    about: str  # why this shape is probed


def compare(reference: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict:
    """Statistics of got vs reference and whether every element is within atol + rtol * |reference|."""
    if got.shape != reference.shape:
        return {"passed": False, "error": f"shape {list(got.shape)} != reference shape {list(reference.shape)}"}
    ref = reference.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - ref)
    if not np.isfinite(diff).all():
        bad = np.argwhere(~np.isfinite(diff))[0]
        return {"passed": False, "error": f"non-finite value at {bad.tolist()}"}
    scale = np.abs(ref)
    bound = atol + rtol * scale
    rel = diff / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    where = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    violations = int((diff > bound).sum())
    return {
        "passed": violations == 0,
        "elements": int(diff.size),
        "violations": violations,
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_rel": float(rel.max()) if diff.size else 0.0,
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "p99_abs": float(np.percentile(diff, 99)) if diff.size else 0.0,
        "where": [int(i) for i in where],  # (row, class) of the largest absolute difference
        "reference_at_max": float(ref[where]) if diff.size else None,
        "value_at_max": float(got[where]) if diff.size else None,
        # The smallest atol that would have passed with this rtol: how far off a failure is.
        "min_atol_to_pass": float(max(0.0, (diff - rtol * scale).max())) if diff.size else 0.0,
    }


def make_probes(
    vocab_size: int,
    pad_id: int,
    long_length: int,
    ragged_length: int,
    real: tuple[np.ndarray, np.ndarray] | None,
    seed: int = 0,
) -> list[Probe]:
    """The gate's probe inputs: T=1, a long row, a ragged padded batch, and real texts."""
    rng = np.random.default_rng(seed)
    ids_pool = np.array([i for i in range(vocab_size) if i != pad_id], dtype=np.int64)

    def rows(lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        return pad_batch([rng.choice(ids_pool, size=n) for n in lengths], pad_id)

    probes = [
        Probe("t1", *rows([1]), "batch 1, T=1: the shortest input, where an axis could be specialised to 1"),
        Probe("long", *rows([long_length]), f"batch 1, T={long_length}: far longer than any training text"),
        Probe(
            "ragged",
            *rows(list(range(1, ragged_length + 1))[::-1]),
            f"batch {ragged_length}, lengths {ragged_length}..1 right-padded: every padding amount",
        ),
    ]
    if real is not None:
        probes.append(Probe("real", real[0], real[1], f"batch {len(real[1])} of real test texts"))
    return probes


def padded_vs_single(backend: Backend, probe: Probe, atol: float, rtol: float) -> dict:
    """The contract's length-awareness: each padded row must equal the same row run alone."""
    batched = backend(probe.token_ids, probe.lengths)
    singles = np.concatenate(
        [
            backend(probe.token_ids[i : i + 1, : probe.lengths[i]], probe.lengths[i : i + 1])
            for i in range(len(probe.lengths))
        ]
    )
    return compare(singles, batched, atol, rtol)


def run_gate(
    reference: Backend,
    backends: dict[str, Backend],
    probes: Sequence[Probe],
    atol: float,
    rtol: float,
    reference_name: str = "pytorch:eager",
) -> dict:
    """Compare every backend with the reference on every probe, and check padded == single for all."""
    results = []
    for probe in probes:
        ref = reference(probe.token_ids, probe.lengths)
        for name, backend in backends.items():
            stats = compare(ref, backend(probe.token_ids, probe.lengths), atol, rtol)
            results.append({"backend": name, "probe": probe.name, "check": "vs_reference", **stats})
    ragged = next((p for p in probes if p.name == "ragged"), None)
    if ragged is not None:
        for name, backend in {reference_name: reference, **backends}.items():
            stats = padded_vs_single(backend, ragged, atol, rtol)
            results.append({"backend": name, "probe": "ragged", "check": "padded_vs_single", **stats})
    return {
        "atol": atol,
        "rtol": rtol,
        "probes": [
            {
                "name": p.name,
                "shape": list(p.token_ids.shape),
                "lengths": [int(p.lengths.min()), int(p.lengths.max())],
                "about": p.about,
            }
            for p in probes
        ],
        "results": results,
        "passed": all(r["passed"] for r in results),
    }


def check_test_set(
    reference: Backend,
    predictor: Predictor,
    texts: Sequence[str],
    atol: float,
    rtol: float,
    batch_size: int = 256,
) -> dict:
    """Text in -> label out through the runtime Predictor vs the PyTorch model: labels must agree 100%."""
    tokenizer = predictor.tokenizer
    encoded = [tokenizer.encode(t, i)[0] for i, t in enumerate(texts)]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    ref = np.empty((len(texts), len(predictor.labels)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, lengths = pad_batch([encoded[i] for i in idx], tokenizer.spec.pad_id)
        out = reference(ids, lengths)
        if out.shape != (len(idx), ref.shape[1]):
            return {
                "texts": len(texts),
                "label_agreement": 0.0,
                "disagreements": [],
                "provider": predictor.provider,
                "logits": {
                    "passed": False,
                    "error": f"the reference returned shape {list(out.shape)} for "
                    f"{len(idx)} texts and {ref.shape[1]} labels",
                },
                "passed": False,
            }
        ref[idx] = out
    got = predictor.logits(list(texts))
    ref_labels, got_labels = ref.argmax(1), got.argmax(1)
    disagree = np.flatnonzero(ref_labels != got_labels)
    stats = compare(ref, got, atol, rtol)
    return {
        "texts": len(texts),
        "label_agreement": float(1.0 - len(disagree) / max(1, len(texts))),
        "disagreements": [
            {
                "index": int(i),
                "text": texts[i],
                "pytorch": predictor.labels[ref_labels[i]],
                "runtime": predictor.labels[got_labels[i]],
            }
            for i in disagree[:20]
        ],
        "logits": stats,
        "provider": predictor.provider,
        "passed": len(disagree) == 0 and stats["passed"],
    }


def format_table(report: dict) -> str:
    """A fixed-width table of every check, failures marked, for people."""
    head = f"{'backend':<34} {'probe':<8} {'check':<16} {'max_abs':>10} {'max_rel':>10} {'p99_abs':>10} {'where':>9}  result"
    lines = [head, "-" * len(head)]
    rows = list(report.get("results", []))
    ts = report.get("test_set")
    if ts:
        rows.append(
            {
                "backend": f"predictor:{ts.get('provider', '?')}",
                "probe": "test",
                "check": "test_set_logits",
                **ts["logits"],
            }
        )
    for r in rows:
        if "error" in r:
            lines.append(f"{r['backend']:<34} {r['probe']:<8} {r['check']:<16} {r['error']}  FAIL")
            continue
        lines.append(
            f"{r['backend']:<34} {r['probe']:<8} {r['check']:<16} {r['max_abs']:>10.2e} {r['max_rel']:>10.2e} "
            f"{r['p99_abs']:>10.2e} {str(tuple(r['where'])):>9}  {'ok' if r['passed'] else 'FAIL'}"
        )
    if ts:
        lines.append(
            f"test set: {ts['texts']} texts, label agreement {ts['label_agreement']:.2%}"
            + ("" if ts["label_agreement"] == 1.0 else f"  FAIL (first: {ts['disagreements'][:3]})")
        )
    for i in report.get("integrity", []):
        if not i["passed"]:
            lines.append(f"file {i['file']}: {i['problem']}  FAIL")
    for s in report.get("skipped", []):
        lines.append(f"skipped {s['backend']}: {s['reason']}")
    if report.get("engines"):
        from seqship.exporters.portability import format_engines

        lines += [
            "",
            "the same model.onnx in every ONNX engine found (reference: " + report.get("reference", "pytorch") + "):",
            format_engines(report["engines"]),
        ]
    lines.append(f"tolerance: |a - b| <= {report['atol']:g} + {report['rtol']:g} * |reference|")
    return "\n".join(lines)
