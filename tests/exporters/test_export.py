"""Export pitfalls of this exact model (../shared/design/EXPORT_NOTES.md), each guarded."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from seqship.exporters.contract import ModelContract
from seqship.exporters.errors import ContractError
from seqship.exporters.onnx import MIN_ONNXSCRIPT, _version_tuple, check_onnx, export_onnx, require_onnxscript
from seqship.exporters.torchscript import export_torchscript
from seqship.pipeline.model import ModelConfig, TextClassifier

EXAMPLE = (torch.randint(2, 20, (2, 7)), torch.tensor([7, 3]))


def tiny(cell="gru", seed=0):
    torch.manual_seed(seed)
    return TextClassifier(ModelConfig(20, 4, cell=cell, embed_dim=8, hidden_dim=8)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(tiny(), path, ModelContract(num_labels=4), EXAMPLE)
    return path


def dims(model, i):
    return [d.dim_param or d.dim_value for d in model.graph.input[i].type.tensor_type.shape.dim]


@pytest.mark.slow
def test_two_exports_in_one_process_both_keep_symbolic_dims(tmp_path, exported):
    # torch 2.13/2.14: a second GRU/LSTM export in one process raises or pins the seq axis unless the
    # exporter's stale dispatch cache is cleared. `exported` was the first export in this module.
    for i, cell in enumerate(["gru", "lstm", "gru"]):
        path = tmp_path / f"again{i}.onnx"
        export_onnx(tiny(cell, seed=i), path, ModelContract(num_labels=4), EXAMPLE)
        m = onnx.load(path)
        assert dims(m, 0) == ["batch", "seq"] and dims(m, 1) == ["batch"]


def test_every_gru_node_has_linear_before_reset_1(exported):
    nodes = [n for n in onnx.load(exported).graph.node if n.op_type == "GRU"]
    assert nodes, "the bidirectional GRU should export as ONNX GRU nodes"
    for n in nodes:
        assert {a.name: a.i for a in n.attribute}["linear_before_reset"] == 1


def test_contract_check_catches_linear_before_reset_0(exported, tmp_path):
    # What onnxscript < 0.7.1 produced: the graph runs, and is wrong by ~0.1.
    m = onnx.load(exported)
    for n in m.graph.node:
        for a in n.attribute:
            if n.op_type == "GRU" and a.name == "linear_before_reset":
                a.i = 0
    bad = tmp_path / "lbr0.onnx"
    onnx.save(m, bad)
    with pytest.raises(ContractError, match="linear_before_reset=0"):
        check_onnx(bad, ModelContract(num_labels=4))


def test_contract_check_catches_a_pinned_axis_and_wrong_names(exported, tmp_path):
    m = onnx.load(exported)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7  # seq pinned to the example's length
    m.graph.output[0].name = "scores"
    bad = tmp_path / "pinned.onnx"
    onnx.save(m, bad)
    with pytest.raises(ContractError) as e:
        check_onnx(bad, ModelContract(num_labels=4))
    text = str(e.value)
    assert "'token_ids' has dims ['batch', 7]" in text and "output names are ['scores']" in text


def test_onnxscript_older_than_0_7_1_is_refused():
    assert _version_tuple("0.7.0") < MIN_ONNXSCRIPT <= _version_tuple(require_onnxscript())
    assert _version_tuple("0.7.1") >= MIN_ONNXSCRIPT and _version_tuple("0.10.0") >= MIN_ONNXSCRIPT


def test_exported_files_match_eager_at_shapes_unlike_the_example(exported, tmp_path):
    model = tiny()
    ts = tmp_path / "model.pt"
    report = export_torchscript(model, ts, ModelContract(num_labels=4))
    assert any("deprecated" in w for w in report["warnings"])  # recorded for the bundle, not silenced
    loaded = torch.jit.load(str(ts))
    from seqship.runtime.session import OnnxModel

    session = OnnxModel(exported, providers="cpu")
    for batch, seq in ((1, 1), (5, 3), (2, 300)):
        ids, lens = torch.randint(1, 20, (batch, seq)), torch.full((batch,), seq)
        with torch.inference_mode():
            ref = model(ids, lens).numpy()
            np.testing.assert_allclose(loaded(ids, lens).numpy(), ref, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(session.run(ids.numpy(), lens.numpy()), ref, atol=1e-5, rtol=1e-5)


def test_empty_inputs_never_reach_onnxruntime(exported):
    # [1, 0] token_ids aborts the whole process inside onnxruntime (exit -6) and lengths=0 silently
    # returns wrong logits. Run in a subprocess so a regression shows as a failed test, not a dead run.
    code = textwrap.dedent(
        f"""
        import numpy as np
        from seqship.runtime.errors import InputError
        from seqship.runtime.session import OnnxModel
        m = OnnxModel({str(exported)!r}, providers="cpu")
        for ids, lens in [(np.zeros((1, 0), np.int64), np.array([0])), (np.ones((1, 4), np.int64), np.array([0])),
                          (np.zeros((0, 3), np.int64), np.zeros(0, np.int64)), (np.ones((2, 4), np.int64), np.array([4, 5]))]:
            try:
                m.run(ids, lens)
                print("ACCEPTED", ids.shape, lens.tolist())
            except InputError as e:
                print("REFUSED", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("REFUSED") == 4, out.stdout
    assert "row 0: length 0 is outside 1..4" in out.stdout and "row 1: length 5" in out.stdout


def test_canary_pack_padded_sequence_still_does_not_export_with_dynamo():
    # Why the model avoids packing. If this starts passing, upstream fixed it: re-check EXPORT_NOTES.md.
    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.gru = torch.nn.Embedding(20, 8), torch.nn.GRU(8, 8, batch_first=True)

        def forward(self, ids, lengths):
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                self.embed(ids), lengths, batch_first=True, enforce_sorted=False
            )
            return self.gru(packed)[1][0]

    with pytest.raises(Exception):  # noqa: B017 - the exporter raises several types here; any refusal will do
        torch.onnx.export(
            Packed().eval(), EXAMPLE, dynamo=True, verbose=False, dynamic_shapes=({0: "b", 1: "t"}, {0: "b"})
        )


# Every architecture runs in the in-process engines in test_every_architecture_runs_batches_in_every_python_engine;
# these add the graph's structure, the long and ragged probes and the JavaScript engines (another onnxruntime
# release, and WebAssembly), on a sample.
@pytest.mark.parametrize(
    "cell, bidirectional, layers, pooling, pair_buckets, vocab",
    [
        ("gru", True, 2, "last", 0, 20),
        ("lstm", True, 1, "last", 0, 20),
        ("gru", False, 1, "max", 0, 20),
        ("lstm", False, 2, "last+max", 0, 20),
        ("rnn", True, 2, "last", 0, 20),
        ("gru", True, 1, "last+max", 0, 20),
        ("lstm", False, 1, "last", 0, 20),  # tract once failed every batch of 2+ for this one
        # token pairs: tract once failed to load last+max with them; OpenVINO computes int64 through float32, so
        # a hash over a word-sized vocabulary (a * V + b > 2**24) went wrong there
        ("gru", True, 1, "max", 13, 20),
        ("gru", True, 1, "last+max", 13, 20),
        ("lstm", False, 2, "last+max", 65537, 20000),
    ],
)
@pytest.mark.slow
def test_fused_export_needs_no_sequence_lens_and_matches_eager_in_every_engine(
    tmp_path, cell, bidirectional, layers, pooling, pair_buckets, vocab
):
    """No recurrent node relies on sequence_lens (engines that ignore or refuse it get the same answers):
    the graph says so, and every ONNX engine's padded rows equal PyTorch and the rows alone (with the
    in-graph pair hashing too: its integer Gather/Add/Where must mean the same in every engine)."""
    from seqship.exporters.parity import make_probes
    from seqship.exporters.portability import JS_ENGINES, PYTHON_ENGINES, engine_gate, format_engines
    from seqship.exporters.recurrent import fused_recurrence
    from seqship.runtime.session import OnnxModel

    torch.manual_seed(0)
    model = TextClassifier(
        ModelConfig(
            vocab,
            4,
            cell=cell,
            embed_dim=8,
            hidden_dim=8,
            num_layers=layers,
            bidirectional=bidirectional,
            pooling=pooling,
            pair_buckets=pair_buckets,
        )
    ).eval()
    ids = torch.randint(1, vocab, (5, 9))
    lens = torch.tensor([9, 4, 1, 7, 2])
    with torch.inference_mode():
        plain = model(ids, lens)
        with fused_recurrence(model):  # the custom op's eager implementation is the same computation
            torch.testing.assert_close(model(ids, lens), plain, atol=1e-6, rtol=1e-6)
    path = tmp_path / "m.onnx"
    with fused_recurrence(model):
        export_onnx(model, path, ModelContract(num_labels=4), EXAMPLE)
    assert not any("forward" in vars(layer) or hasattr(layer, "onnx_w0") for layer in model.layers)  # restored
    proto = onnx.load(path)
    nodes = [n for n in proto.graph.node if n.op_type in ("GRU", "LSTM", "RNN")]
    assert [n.op_type for n in nodes] == [cell.upper()] * layers * (2 if bidirectional else 1)
    weights = {i.name for i in proto.graph.initializer}
    for n in nodes:
        attrs = {a.name: a for a in n.attribute}
        assert attrs.get("direction") is None or attrs["direction"].s == b"forward"
        assert len(n.input) < 5 or not n.input[4], (
            f"{n.name} reads sequence_lens: engines that ignore it would be wrong"
        )
        assert len(n.input) > 5 and n.input[5], f"{n.name} has no explicit initial state (tract needs one)"
        assert all(name in weights for name in n.input[1:4]), (
            f"{n.name}'s W, R, B are computed at run time, not constants"
        )
    session = OnnxModel(path, providers="cpu")
    np.testing.assert_allclose(session.run(ids.numpy(), lens.numpy()), plain.numpy(), atol=1e-5, rtol=1e-5)
    for i, n in enumerate(lens.tolist()):  # padding changes nothing in the fused graph either
        alone = session.run(ids[i : i + 1, :n].numpy(), lens[i : i + 1].numpy())
        np.testing.assert_allclose(alone[0], plain[i].numpy(), atol=1e-5, rtol=1e-5)

    def eager(i, n):
        with torch.inference_mode():
            return model(torch.from_numpy(i), torch.from_numpy(n)).numpy()

    probes = make_probes(vocab, 0, long_length=80, ragged_length=12, real=(ids.numpy(), lens.numpy()), seed=1)
    test_ids = [row[:n].tolist() for row, n in zip(np.random.default_rng(2).integers(1, vocab, (60, 30)), range(1, 61))]
    gate = engine_gate(path, eager, probes, [t for t in test_ids if t], 0, 1e-5, 1e-5)
    print(format_engines(gate))
    # CI installs every engine (the `engines` extra, runtime/js): none may be skipped, all must agree.
    assert [e["engine"] for e in gate["engines"]] == list(PYTHON_ENGINES + JS_ENGINES), gate["skipped"]
    assert gate["passed"], format_engines(gate)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_every_architecture_runs_batches_in_every_python_engine(tmp_path, cell):
    """Every direction x depth x pooling of a cell loads in each in-process engine and gives eager's logits
    for a padded batch of several rows (one text alone is not enough: tract once ran a lone unidirectional
    LSTM for one text and refused every batch of two or more). The JS engines run onnxruntime's kernels and
    get sampled architectures in the test above."""
    from seqship.exporters.engines import load_engines
    from seqship.exporters.portability import PYTHON_ENGINES
    from seqship.exporters.recurrent import fused_recurrence

    ids = torch.randint(1, 20, (4, 7), generator=torch.Generator().manual_seed(3))
    lens = torch.tensor([7, 3, 1, 5])
    failures = []
    for bidirectional in (False, True):
        for layers in (1, 2):
            for pooling in ("last", "max", "last+max"):
                torch.manual_seed(0)
                model = TextClassifier(
                    ModelConfig(
                        20,
                        3,
                        cell=cell,
                        embed_dim=6,
                        hidden_dim=5,
                        num_layers=layers,
                        bidirectional=bidirectional,
                        pooling=pooling,
                    )
                ).eval()
                with torch.inference_mode():
                    want = model(ids, lens).numpy()
                path = tmp_path / f"{bidirectional}-{layers}-{pooling}.onnx"
                with fused_recurrence(model):
                    export_onnx(model, path, ModelContract(num_labels=3), EXAMPLE)
                loaded, skipped, failed = load_engines(path, PYTHON_ENGINES)
                assert not skipped, skipped  # CI installs the `engines` extra
                name = f"{cell} bidirectional={bidirectional} layers={layers} pooling={pooling}"
                failures += [f"{name}: {f['engine']} does not load it: {f['error']}" for f in failed]
                for engine in loaded:
                    try:
                        got = engine.run(ids.numpy(), lens.numpy())
                    except Exception as e:  # the engine's own exception type
                        failures.append(
                            f"{name}: {engine.name} fails on a batch of 4: {type(e).__name__}: {str(e)[:200]}"
                        )
                        continue
                    if not np.allclose(got, want, atol=1e-5, rtol=1e-5):
                        failures.append(f"{name}: {engine.name} differs by {np.abs(got - want).max():.2e}")
    assert not failures, "\n".join(failures)
