"""Done means: the default config on the real names data gives a verified bundle at the promised path."""

import json

import pytest

from seqship.runtime import Predictor
from tests.conftest import invoke


@pytest.mark.slow
def test_default_config_on_names_trains_to_0_80_and_ships_a_verified_bundle(data_dir, tmp_path):
    result = invoke("run", "all", "--data-dir", str(data_dir), "--artifacts-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["bundle"] == str(tmp_path.resolve() / "names" / "bundle")  # default run name = dataset
    assert summary["metrics"]["test_accuracy"] >= 0.80, summary["metrics"]
    assert summary["parity"]["passed"] and summary["parity"]["test_set_label_agreement"] == 1.0
    manifest = json.loads((tmp_path / "names" / "bundle" / "manifest.json").read_text())
    assert manifest["metrics"]["test_accuracy"] == summary["metrics"]["test_accuracy"]
    assert manifest["signature"]["inputs"][0] == {"name": "token_ids", "dtype": "int64", "dims": ["batch", "seq"]}
    p = Predictor.load(summary["bundle"], providers="cpu")
    # Spot checks on unambiguous names, the kind a user types first.
    labels = [r.label for r in p.predict(["Tanaka", "Yamamoto", "Ivanov", "Smirnov"])]
    assert labels == ["Japanese", "Japanese", "Russian", "Russian"]
