"""Where Node or the JavaScript engines are missing, the parity gate lists them as skipped, with the command
that adds them, and never as a pass or a failure."""

import numpy as np

from seqship.exporters.portability import JS_ENGINES, engine_gate, format_engines, js_engine_unavailable


def _reference(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return np.zeros((len(ids), 3), dtype=np.float32)


def _gate(tmp_path, js_dir):
    # A skipped engine never reads the model, so none is needed: only the discovery runs.
    return engine_gate(
        tmp_path / "model.onnx", _reference, [], [[1, 2, 3], [4]], 0, 1e-5, 1e-5, engines=JS_ENGINES, js_dir=js_dir
    )


def test_js_engines_without_node_modules_are_skipped_with_the_npm_command(tmp_path):
    js_dir = tmp_path / "js"
    js_dir.mkdir()
    gate = _gate(tmp_path, js_dir)
    assert gate["engines"] == [] and gate["passed"]
    assert [s["engine"] for s in gate["skipped"]] == list(JS_ENGINES)
    for s in gate["skipped"]:
        assert str(js_dir / "node_modules" / s["engine"]) in s["reason"]
        assert f"npm ci --prefix {js_dir} --ignore-scripts" in s["reason"]
    table = format_engines(gate)
    assert all(f"{name:<18} skipped: " in table for name in JS_ENGINES)


def test_js_engines_without_node_are_skipped_with_the_commands_that_add_node_and_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no node on it
    gate = _gate(tmp_path, None)
    assert [s["engine"] for s in gate["skipped"]] == list(JS_ENGINES)
    for s in gate["skipped"]:
        assert s["reason"].startswith("node is not installed")
        assert "sudo apt-get install -y nodejs npm && npm ci --prefix runtime/js --ignore-scripts" in s["reason"]
    assert js_engine_unavailable("onnxruntime-node") == gate["skipped"][0]["reason"]
