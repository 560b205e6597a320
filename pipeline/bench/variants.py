"""Where one text's time goes in onnxruntime, and what other graphs of the same model would cost.

usage:

    python -m seqship.pipeline.bench.variants --bundle DIR [--rounds N] [--json]

For a bundle of the default shape (one bidirectional GRU layer, final states into the head), this writes three
other graphs of the same weights and measures them beside the shipped one with `graphs.measure` (interleaved
rounds, single-threaded sessions):
- `sequence_lens`: one bidirectional GRU node that is given the lengths (the graph before the portable export;
  onnxruntime honours `sequence_lens`, several other engines do not, see docs/portable.md);
- `one node, shifted`: one bidirectional GRU node and no `sequence_lens`; its input is each row beside the same
  row shifted right to end at the last position, so the reverse direction meets the real tokens first (exact in
  every row; each direction's input weights are zero on the other half);
- `block-diagonal`: one forward GRU of twice the width that runs both directions at once (exact: the zero blocks
  add exact zeros).
Each is first checked against the shipped graph on a padded batch (max |diff| printed). Then the kernels alone:
one run of a trivial graph, a chain of 10 trivial nodes, and a lone GRU, RNN and LSTM node (hidden 128, input
64, batch 1) at 1, 6 and 24 steps: what a node costs, and what a recurrent step costs. Ratios between rows of one
run are what to compare; absolute numbers move with the machine. Needs `onnx` (the `train` extra).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

NOT_DEFAULT = (
    "Error: variants needs a bundle of the default shape (one bidirectional GRU layer, its final states into the "
    "head; no --wide, --pair-buckets or pooling other than last)"
)
EXACT = 1e-4  # a variant further than this from the shipped graph is another model: timing it would mislead


def _variants(model_bytes: bytes) -> dict[str, bytes]:
    """The three alternative graphs of a default-shaped model.onnx (weights read from its initializers)."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    src = onnx.load_from_string(model_bytes)
    grus = [n for n in src.graph.node if n.op_type == "GRU"]
    gemms = [n for n in src.graph.node if n.op_type == "Gemm"]
    if (
        len(grus) != 2
        or len(gemms) != 1
        or len(gemms[0].input) != 3
        or any(n.op_type in ("LSTM", "RNN") for n in src.graph.node)
    ):
        raise SystemExit(NOT_DEFAULT)
    w = {i.name: nh.to_array(i) for i in src.graph.initializer}
    (wf, rf, bf), (wb, rb, bb) = ([w[name] for name in n.input[1:4]] for n in grus)
    if wf.shape != wb.shape:  # two stacked unidirectional layers, not the two directions of one
        raise SystemExit(NOT_DEFAULT)
    gemm = gemms[0]
    head_w, head_b = w[gemm.input[1]], w[gemm.input[2]]
    emb = w[next(n for n in src.graph.node if n.op_type == "Gather").input[0]]
    H, C = rf.shape[2], head_w.shape[0]
    N = h.make_node

    def model(nodes, inits):
        inits = dict(inits, E=emb, HW=head_w, HB=head_b, one=np.array(1, np.int64), zero=np.array(0, np.int64))
        inits.update(ax1=np.array([1], np.int64), ax2=np.array([2], np.int64))
        graph = h.make_graph(
            [N("Gather", ["E", "token_ids"], ["emb"])]
            + nodes
            + [N("Gemm", ["feat", "HW", "HB"], ["logits"], transB=1)],
            "variant",
            [
                h.make_tensor_value_info("token_ids", TP.INT64, ["batch", "seq"]),
                h.make_tensor_value_info("lengths", TP.INT64, ["batch"]),
            ],
            [h.make_tensor_value_info("logits", TP.FLOAT, ["batch", C])],
            [nh.from_array(np.asarray(v), k) for k, v in inits.items()],
        )
        return h.make_model(graph, opset_imports=[h.make_opsetid("", 20)]).SerializeToString()

    gru = dict(hidden_size=H, linear_before_reset=1)
    last = [N("Sub", ["lengths", "one"], ["lm1"]), N("Unsqueeze", ["lm1", "ax1"], ["last"])]
    seq_lens = model(
        [
            N("Transpose", ["emb"], ["x"], perm=[1, 0, 2]),
            N("Cast", ["lengths"], ["sl"], to=TP.INT32),
            N("GRU", ["x", "W", "R", "B", "sl"], ["", "yh"], direction="bidirectional", **gru),
            N("Transpose", ["yh"], ["yt"], perm=[1, 0, 2]),
            N("Reshape", ["yt", "shape"], ["feat"]),
        ],
        dict(W=np.concatenate([wf, wb]), R=np.concatenate([rf, rb]), B=np.concatenate([bf, bb]), shape=[-1, 2 * H]),
    )
    zeros = np.zeros_like(wf)
    shifted = model(
        last
        + [
            N("Shape", ["last"], ["bs"]),
            N("Expand", ["z0", "bs"], ["h0"]),
            N("Shape", ["emb"], ["sh"]),
            N("Gather", ["sh", "one"], ["T"]),
            N("Range", ["zero", "T", "one"], ["pos"]),
            N("Unsqueeze", ["lengths", "ax1"], ["L1"]),
            N("Sub", ["L1", "T"], ["LmT"]),
            N("Add", ["pos", "LmT"], ["s"]),
            N("Max", ["s", "zero"], ["sidx"]),
            N("Unsqueeze", ["sidx", "ax2"], ["shift"]),
            N("GatherND", ["emb", "shift"], ["embs"], batch_dims=1),
            N("Concat", ["emb", "embs"], ["x2"], axis=2),
            N("Transpose", ["x2"], ["xt"], perm=[1, 0, 2]),
            N("GRU", ["xt", "W", "R", "B", "", "h0"], ["Y"], direction="bidirectional", **gru),
            N("Transpose", ["Y"], ["Yb"], perm=[2, 1, 0, 3]),  # [B, 2, T, H]
            N("Neg", ["LmT"], ["TmL"]),
            N("Concat", ["last", "TmL"], ["at"], axis=1),
            N("Unsqueeze", ["at", "ax2"], ["at3"]),
            N("GatherND", ["Yb", "at3"], ["hl"], batch_dims=2),  # forward at L-1, reverse at T-L
            N("Reshape", ["hl", "shape"], ["feat"]),
        ],
        dict(
            W=np.concatenate([np.concatenate([wf, zeros], 2), np.concatenate([zeros, wb], 2)]),
            R=np.concatenate([rf, rb]),
            B=np.concatenate([bf, bb]),
            z0=np.zeros((2, 1, H), np.float32),
            shape=[0, 2 * H],
        ),
    )

    def block(a, b):  # per gate, [[a_g, 0], [0, b_g]]
        out = np.zeros((1, 3 * 2 * H, a.shape[2] + b.shape[2]), np.float32)
        for g in range(3):
            out[0, 2 * g * H : (2 * g + 1) * H, : a.shape[2]] = a[0, g * H : (g + 1) * H]
            out[0, (2 * g + 1) * H : (2 * g + 2) * H, a.shape[2] :] = b[0, g * H : (g + 1) * H]
        return out

    def block_bias(a, b):  # Wb then Rb, each per gate: forward's H values, then backward's
        return np.concatenate(
            [x[0, k * 3 * H + g * H : k * 3 * H + (g + 1) * H] for k in range(2) for g in range(3) for x in (a, b)]
        )[None]

    rev = [
        N("Shape", ["emb"], ["sh"]),
        N("Gather", ["sh", "one"], ["T"]),
        N("Range", ["zero", "T", "one"], ["pos"]),
        N("Unsqueeze", ["lengths", "ax1"], ["L1"]),
        N("Less", ["pos", "L1"], ["valid"]),
        N("Sub", ["last", "pos"], ["rv"]),
        N("Where", ["valid", "rv", "pos"], ["rv2"]),
        N("Unsqueeze", ["rv2", "ax2"], ["rev"]),
        N("GatherND", ["emb", "rev"], ["embr"], batch_dims=1),
    ]
    block_diagonal = model(
        last
        + [N("Shape", ["last"], ["bs"]), N("Expand", ["z0", "bs"], ["h0"])]
        + rev
        + [
            N("Concat", ["emb", "embr"], ["x2"], axis=2),
            N("Transpose", ["x2"], ["xt"], perm=[1, 0, 2]),
            N("GRU", ["xt", "W", "R", "B", "", "h0"], ["Y"], hidden_size=2 * H, linear_before_reset=1),
            N("Transpose", ["Y"], ["Yb"], perm=[2, 0, 1, 3]),
            N("GatherND", ["Yb", "last"], ["hl"], batch_dims=1),
            N("Reshape", ["hl", "shape"], ["feat"]),
        ],
        dict(
            W=block(wf, wb),
            R=block(rf, rb),
            B=block_bias(bf, bb),
            z0=np.zeros((1, 1, 2 * H), np.float32),
            shape=[0, 2 * H],
        ),
    )
    return {"sequence_lens": seq_lens, "one node, shifted": shifted, "block-diagonal": block_diagonal}


def _kernels(rounds: int) -> dict[str, float]:
    """Median microseconds per run of tiny graphs: the cost of a node, and of a recurrent step."""
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    rng = np.random.default_rng(0)

    def session(nodes, inp, out, inits=()):
        g = h.make_graph(nodes, "k", [inp], [h.make_tensor_value_info(out, TP.FLOAT, None)], list(inits))
        return ort.InferenceSession(
            h.make_model(g, opset_imports=[h.make_opsetid("", 20)]).SerializeToString(),
            opts,
            providers=["CPUExecutionProvider"],
        )

    vec = h.make_tensor_value_info("x", TP.FLOAT, ["n"])
    cases = {
        "1 trivial node": (session([h.make_node("Identity", ["x"], ["y"])], vec, "y"), np.ones(4, np.float32), "y"),
        "10 trivial nodes": (
            session([h.make_node("Neg", ["x" if i == 0 else f"y{i}"], [f"y{i + 1}"]) for i in range(10)], vec, "y10"),
            np.ones(4, np.float32),
            "y10",
        ),
    }
    seq = h.make_tensor_value_info("x", TP.FLOAT, ["T", 1, 64])
    for op, gates in (("GRU", 3), ("RNN", 1), ("LSTM", 4)):
        inits = [
            nh.from_array((rng.standard_normal((1, gates * 128, 64)) * 0.1).astype(np.float32), "W"),
            nh.from_array((rng.standard_normal((1, gates * 128, 128)) * 0.1).astype(np.float32), "R"),
            nh.from_array(np.zeros((1, 2 * gates * 128), np.float32), "B"),
        ]
        extra = {"linear_before_reset": 1} if op == "GRU" else {}
        outs = ["Y", "Yh"] + (["Yc"] if op == "LSTM" else [])
        s = session([h.make_node(op, ["x", "W", "R", "B"], outs, hidden_size=128, **extra)], seq, "Yh", inits)
        for T in (1, 6, 24):
            cases[f"{op} node, {T} steps"] = (s, np.ones((T, 1, 64), np.float32), "Yh")
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (s, x, out) in cases.items():
            t = time.perf_counter()
            for _ in range(200):
                s.run([out], {"x": x})
            times[name].append((time.perf_counter() - t) / 200 * 1e6)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    from seqship.pipeline.bench.args import add_bundle, add_json, parser
    from seqship.pipeline.bench.graphs import measure
    from seqship.runtime.bundle import MODEL_ONNX, open_bundle

    ap = parser(__doc__)
    add_bundle(ap)
    ap.add_argument("--rounds", type=int, default=15, help="Interleaved rounds (at least 1).")
    add_json(ap)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    import onnxruntime as ort

    from seqship.runtime.errors import SeqshipError

    try:
        shipped = open_bundle(args.bundle).data[MODEL_ONNX]
    except SeqshipError as e:
        raise SystemExit(f"Error: {e}") from None
    graphs = {"shipped (portable)": shipped, **_variants(shipped)}
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, 256)
    ids = np.where(np.arange(11) < lengths[:, None], rng.integers(1, 50, (256, 11)), 0).astype(np.int64)
    feed = {"token_ids": ids, "lengths": lengths.astype(np.int64)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # the variants keep a few unused constants, which onnxruntime warns about
    outputs = {
        k: ort.InferenceSession(v, opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for k, v in graphs.items()
    }
    diff = {k: float(np.abs(v - outputs["shipped (portable)"]).max()) for k, v in outputs.items()}
    if max(diff.values()) > EXACT:  # two GRU nodes and one Gemm, but not the default model (pooling, pairs)
        raise SystemExit(f"{NOT_DEFAULT}: its variants differ from it by up to {max(diff.values()):.1e}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (name, data) in enumerate(graphs.items()):
            paths[name] = Path(tmp) / f"{i}.onnx"
            paths[name].write_bytes(data)
        times = measure([str(p) for p in paths.values()], args.rounds)
        graph_rows = {
            name: {"max_abs_diff_vs_shipped": diff[name], **{f: float(np.median(t)) for f, t in times[str(p)].items()}}
            for name, p in paths.items()
        }
    result = {"graphs_median_us": graph_rows, "kernels_median_us": _kernels(args.rounds)}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{'graph':<22} {'one text (us)':>14} {'128 texts (us)':>15}  max |diff| vs shipped (padded batch of 256)")
    for name, row in graph_rows.items():
        print(f"{name:<22} {row['one text']:>14.1f} {row['128 texts']:>15.1f}  {row['max_abs_diff_vs_shipped']:.1e}")
    print(f"\n{'kernel alone':<22} {'us per run':>14}")
    for name, us in result["kernels_median_us"].items():
        print(f"{name:<22} {us:>14.1f}")


if __name__ == "__main__":
    main()
