"""`pipeline bench`: the JSON a CI dashboard reads, with ratios computed from the run's own numbers."""

import json

import numpy as np
import pytest

from seqship.pipeline.bench import agreement, flops_per_text
from tests.conftest import invoke


@pytest.fixture(scope="module")
def bench(tiny_run):
    result = invoke(
        "bench",
        "--bundle",
        tiny_run[1]["bundle"],
        "--json",
        "--threads",
        "2",
        "--repeats",
        "2",
        "--latency-texts",
        "30",
        "--bulk-texts",
        "600",
        "--cold-repeats",
        "1",
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_json_has_one_key_per_figure_and_every_contender(bench):
    assert {
        "latency_one",
        "throughput_bulk",
        "cold_start",
        "efficiency",
        "stage_seconds",
        "threads",
        "targets",
    } <= bench.keys()
    assert set(bench["latency_one"]["contenders"]) == {"eager", "torchscript", "onnxruntime", "predictor"}
    assert set(bench["throughput_bulk"]["contenders"]) == {"eager", "torchscript", "onnxruntime", "predictor"}
    assert set(bench["cold_start"]["contenders"]) == {"predictor", "pytorch"}
    for v in bench["latency_one"]["contenders"].values():
        assert 0 < v["p50_us"] <= v["p99_us"]
    assert bench["threads"] == 2 and bench["refused"] == {}
    assert set(bench["stage_seconds"]) == {"data", "train", "export", "verify", "package"}
    assert bench["texts"]["bulk"] == 600


def test_bench_ratios_are_computed_from_its_own_measurements(bench):
    lat, tp, cold, eff = (bench[k] for k in ("latency_one", "throughput_bulk", "cold_start", "efficiency"))
    c = lat["contenders"]
    assert lat["ratios"]["predictor_speedup_vs_eager"] == pytest.approx(c["eager"]["p50_us"] / c["predictor"]["p50_us"])
    assert lat["ratios"]["onnxruntime_speedup_vs_eager"] == pytest.approx(
        c["eager"]["p50_us"] / c["onnxruntime"]["p50_us"]
    )
    assert lat["ratios"]["predictor_speedup_vs_torchscript"] == pytest.approx(
        c["torchscript"]["p50_us"] / c["predictor"]["p50_us"]
    )
    assert lat["predictor_p50_us"] == c["predictor"]["p50_us"]
    t = tp["contenders"]
    assert tp["ratios"]["predictor_vs_torchscript"] == pytest.approx(
        t["predictor"]["texts_per_s"] / t["torchscript"]["texts_per_s"]
    )
    assert tp["ratios"]["predictor_vs_eager"] == pytest.approx(
        t["predictor"]["texts_per_s"] / t["eager"]["texts_per_s"]
    )
    assert tp["ratios"]["predictor_vs_ort_padded"] == pytest.approx(
        t["predictor"]["texts_per_s"] / t["onnxruntime"]["texts_per_s"]
    )
    assert t["predictor"]["texts_per_s"] == pytest.approx(600 / t["predictor"]["seconds"])
    k = cold["contenders"]
    assert cold["ratios"]["wall_fraction"] == pytest.approx(k["predictor"]["wall_s"] / k["pytorch"]["wall_s"])
    assert cold["ratios"]["rss_fraction"] == pytest.approx(
        k["predictor"]["peak_rss_mib"] / k["pytorch"]["peak_rss_mib"]
    )
    assert eff["fraction_of_matmul_peak"] == pytest.approx(eff["achieved_flops_per_s"] / eff["matmul_peak_flops_per_s"])
    assert eff["achieved_flops_per_s"] == pytest.approx(eff["useful_flops"] / t["predictor"]["seconds"])
    for name, target in bench["targets"].items():
        section, key = name.split(".")
        assert target["value"] == bench[section].get("ratios", {}).get(key, bench[section].get(key))
    assert {"latency_one.predictor_p50_us", "latency_one.predictor_speedup_vs_torchscript"} <= bench["targets"].keys()


def test_a_contender_whose_outputs_differ_is_refused():
    ref = np.array([[1.0, -2.0], [3.0, 0.5]])
    verdict = agreement(
        ref, {"same": ref.astype(np.float32), "off": (ref + 1e-3).astype(np.float32), "shape": ref[:1]}, 1e-5, 1e-5
    )
    assert verdict["same"] is None
    assert "outputs differ from eager PyTorch (max |diff| 1.00e-03)" == verdict["off"]
    assert "shape" in verdict["shape"]


def test_flops_count_real_tokens_only():
    cfg = {"cell": "gru", "hidden_dim": 4, "embed_dim": 3, "bidirectional": True, "num_layers": 1, "num_labels": 2}
    # per token: 2 directions x 2 x 3 gates x H(E + H) = 2*2*3*4*7 = 336; head: 2 x 2H x C = 32
    assert flops_per_text(cfg, 5) == 5 * 336 + 32
    assert flops_per_text(cfg | {"cell": "lstm"}, 1) == 448 + 32


def test_the_cold_pytorch_contender_runs_only_the_bytes_the_manifest_verified(bundle_copy):
    # It loaded model.pt by path after the parent had verified the bundle: a file changed in between was run.
    from seqship.pipeline.bench import COLD_TORCH, _cold
    from seqship.pipeline.bench.runtime import BenchConfig
    from seqship.runtime.errors import SeqshipError

    files = json.loads((bundle_copy / "manifest.json").read_text())["files"]
    digests = f"{files['model.pt']['sha256']},{files['tokenizer.json']['sha256']}"
    cfg = BenchConfig(threads=1, cold_repeats=1)
    assert _cold(COLD_TORCH, bundle_copy, "Nguyen", cfg, digests)["wall_s"] > 0
    (bundle_copy / "model.pt").write_bytes((bundle_copy / "model.pt").read_bytes() + b"\0")
    with pytest.raises(SeqshipError, match=r"model.pt: its sha256 no longer matches the verified manifest"):
        _cold(COLD_TORCH, bundle_copy, "Nguyen", cfg, digests)


def test_variants_of_the_graph_are_timed_only_when_they_compute_the_shipped_model(tiny_run, capsys):
    # python -m seqship.pipeline.bench.variants: each other graph of the same weights is checked exact first
    import onnx

    from seqship.pipeline.bench import variants
    from seqship.runtime.bundle import MODEL_ONNX, open_bundle

    bundle = tiny_run[1]["bundle"]
    variants.main(["--bundle", str(bundle), "--rounds", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert len(result["graphs_median_us"]) == 4 and "GRU node, 6 steps" in result["kernels_median_us"]
    assert all(g["max_abs_diff_vs_shipped"] <= variants.EXACT for g in result["graphs_median_us"].values())
    # a graph of another shape (here: a head without bias, as with --wide) is refused, not timed as another model
    model = onnx.load_from_string(open_bundle(bundle).data[MODEL_ONNX])
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    del gemm.input[2]
    with pytest.raises(SystemExit, match="variants needs a bundle of the default shape"):
        variants._variants(model.SerializeToString())
    with pytest.raises(SystemExit):
        variants.main(["--bundle", str(bundle), "--rounds", "0"])
