"""`pipeline predict --engine ray`: bulk scoring on Ray Data, on a local Ray and on a real multi-node Ray
cluster simulated on this machine (ray.cluster_utils.Cluster), where a node dies mid-job."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None:  # CI installs the `ray` extra (install.sh): there, missing is a failure
    if os.environ.get("CI"):
        pytest.fail("ray is not installed: install.sh installs the `ray` extra", pytrace=False)
    pytest.skip("the `ray` extra is not installed (pip install -e '.[ray]')", allow_module_level=True)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from seqship.runtime import Predictor  # noqa: E402
from seqship.runtime.bulk import score_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "seqship.pipeline.cli"]
REPEATS = 100  # the fault test's input: 250,000 rows, so that the actors are still scoring when the node goes (40 was
# too few once in six runs: the pool had finished its input before the node went, and no actor was restarted)


@pytest.fixture(scope="module")
def bundle(tiny_run) -> Path:
    return Path(tiny_run[1]["bundle"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_dir) -> Path:
    """A folder of real surnames in all three formats, with the rows a real input file has: ids of several
    kinds, a line that is not JSON, an empty text, a null text, a line without a final newline."""
    per_language = [
        [t for t in f.read_text(encoding="utf-8").split("\n") if t.strip()]
        for f in sorted((data_dir / "names").glob("*.txt"))
    ]
    names = [t for row in itertools.zip_longest(*per_language) for t in row if t is not None]  # languages interleaved
    folder = tmp_path_factory.mktemp("ray-in")
    (folder / "a-names.txt").write_text("\n".join(names[:2500]), encoding="utf-8")  # no final newline
    with open(folder / "b-rows.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(names[2500:3500]):
            f.write(json.dumps({"id": f"n{i}" if i % 2 else i, "text": t}, ensure_ascii=False) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"id": "empty", "text": ""}) + "\n")
        f.write('{"id": "lone", "text": "\\ud800Nguyen"}\n')  # a lone surrogate: valid JSON, scored like any text
    texts = names[3500:5000] + [None]
    pq.write_table(
        pa.table({"text": texts, "id": list(range(len(texts)))}), folder / "c-table.parquet", row_group_size=256
    )
    return folder


def local_answers(bundle: Path, inputs: Path, tmp: Path) -> dict:
    """(file, index) -> what local scoring (`pipeline predict --input`, the runtime) answers for that row."""
    out = {}
    for name in ("a-names.txt", "b-rows.jsonl"):
        score_file(Predictor.load(bundle), inputs / name, tmp / f"{name}.out", top_k=2)
        for line in (tmp / f"{name}.out").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out[(name, row["index"])] = row
    table = pq.read_table(inputs / "c-table.parquet")
    texts = table.column("text").to_pylist()
    results = Predictor.load(bundle).predict([t or "" for t in texts], top_k=2, errors="return")
    for i, (t, r) in enumerate(zip(texts, results)):
        out[("c-table.parquet", i)] = {"index": i, "id": i, **({"error": "null"} if t is None else r.to_dict())}
    return out


def read_output(folder: Path) -> list[dict]:
    rows = []
    for part in sorted(folder.glob("part-*")):
        if part.suffix == ".jsonl":
            rows += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines()]
        else:
            for r in pq.read_table(part).to_pylist():
                rows.append({k: v for k, v in r.items() if v is not None})
    return rows


def assert_same_as_local(rows: list[dict], local: dict, parquet_ids: bool = False) -> None:
    """Every input row exactly once, in input order, with local scoring's label and scores (within 1e-6)."""
    keys = [(r["file"], r["index"]) for r in rows]
    assert keys == list(local), "rows missing, repeated or out of order"
    for r in rows:
        want = local[(r["file"], r["index"])]
        if "error" in want:
            assert "error" in r and "label" not in r, r
            if r["file"] != "c-table.parquet":  # the same message as local scoring, naming the same row
                assert r["error"] == want["error"]
            continue
        assert "error" not in r, r
        assert r["label"] == want["label"]
        assert math.isclose(r["score"], want["score"], abs_tol=1e-6)
        assert [t["label"] for t in r["top_k"]] == [t["label"] for t in want["top_k"]]
        assert all(math.isclose(a["score"], b["score"], abs_tol=1e-6) for a, b in zip(r["top_k"], want["top_k"]))
        assert (r["num_tokens"], r["truncated"]) == (want["num_tokens"], want["truncated"])
        if "id" in want:
            assert r["id"] == (str(want["id"]) if parquet_ids else want["id"])


@pytest.mark.slow
def test_predict_engine_ray_on_a_local_ray_gives_local_scoring_answers_row_for_row(bundle, inputs, tmp_path):
    out = tmp_path / "scored"
    p = subprocess.run(
        [
            *CLI,
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--engine",
            "ray",
            "--workers",
            "2",
            "--top-k",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    # Two rows cannot be scored (not JSON; empty) and one has no text (null): exit 1, as local predict.
    assert p.returncode == 1, p.stderr
    assert "3 of 5004 texts could not be scored" in p.stderr
    local = local_answers(bundle, inputs, tmp_path)
    rows = read_output(out)
    assert_same_as_local(rows, local)
    by_key = {(r["file"], r["index"]): r for r in rows}
    assert (
        "not JSON" in by_key[("b-rows.jsonl", 1000)]["error"] and "line 1001" in by_key[("b-rows.jsonl", 1000)]["error"]
    )
    assert by_key[("b-rows.jsonl", 1001)]["id"] == "empty" and "text #1001" in by_key[("b-rows.jsonl", 1001)]["error"]
    assert by_key[("b-rows.jsonl", 1002)]["label"] == local[("b-rows.jsonl", 1002)]["label"]
    assert "is null" in by_key[("c-table.parquet", 1500)]["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"], summary["scored"], summary["errors"]) == (5004, 5004, 5001, 3)
    assert summary["bundle_sha256"] == Predictor.load(bundle).digest and summary["engine"] == "ray"
    assert summary["workers"] == 2 and [f["rows"] for f in summary["files"]] == [2500, 1003, 1501]
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.jsonl", "summary.json"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "ray"], "--engine ray scores --input PATH"),
        (["--engine", "ray", "--format", "csv", "--output", "{out}"], "leave --format out"),
        (["--engine", "ray", "--threads", "2", "--output", "{out}"], "use --workers"),
        (["--workers", "2", "--output", "{out}/x.jsonl"], "--workers applies to --engine ray"),
    ],
)
def test_usage_errors_say_what_to_change(bundle, inputs, tmp_path, args, message):
    args = [a.replace("{out}", str(tmp_path / "o")) for a in args]
    p = subprocess.run(
        [*CLI, "predict", "--bundle", str(bundle), "--input", str(inputs), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_inputs_and_outputs_it_cannot_use_are_refused_before_ray_starts(bundle, inputs, tmp_path):
    from seqship.runtime.errors import InputError
    from seqship.runtime.ray import score_with_ray

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "a.txt").write_text("Nguyen\n")
    (odd / "b.csv").write_text("text\nSchmidt\n")
    with pytest.raises(InputError, match=r"b\.csv: not a \.txt, \.jsonl/\.ndjson or \.parquet file"):
        score_with_ray(bundle, odd, tmp_path / "out")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    (busy / "summary.json").write_text('{"engine": "ray", "parts": []}')  # looks like an output, holds more
    with pytest.raises(InputError, match="holds other files"):
        score_with_ray(bundle, inputs, busy)
    assert (busy / "mine.txt").read_text() == "keep me"
    # A folder of the user's that carries a part's name is not a part: the folder is not replaced.
    (busy / "mine.txt").unlink()
    (busy / "part-00000.jsonl").mkdir()
    (busy / "part-00000.jsonl" / "mine.txt").write_text("keep me")
    (busy / "summary.json").write_text('{"engine": "ray", "parts": [{"name": "part-00000.jsonl", "rows": 1}]}')
    with pytest.raises(InputError, match="holds other files"):
        score_with_ray(bundle, inputs, busy)
    (busy / "summary.json").write_text("[]")  # JSON, but not a summary
    with pytest.raises(InputError, match="holds other files"):
        score_with_ray(bundle, inputs, busy)
    assert (busy / "part-00000.jsonl" / "mine.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / os.fsdecode(b"\xff.txt")).write_text("")  # and a file name that is not UTF-8
    assert score_with_ray(bundle, empty, tmp_path / "empty-out").rows_in == 0  # as local scoring: an empty output
    assert sorted(p.name for p in (tmp_path / "empty-out").iterdir()) == ["summary.json"]
    summary = json.loads((tmp_path / "empty-out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["files"] == [{"name": "\\xff.txt", "format": "lines", "rows": 0}]
    from seqship.runtime.ray import RayJobError

    # An address no one answers fails in seconds (ray.init would wait for ever), in each way one is written.
    for address in ("127.0.0.1:1", " 127.0.0.1:1 ", "[::1]:1"):
        with pytest.raises(RayJobError, match=re.escape(f"cannot reach the Ray cluster at {address.strip()!r}")):
            score_with_ray(bundle, inputs, tmp_path / "out", ray_address=address)
    for address in ("ray://127.0.0.1:10001", "RAY://127.0.0.1:10001"):  # the scheme, in any case
        with pytest.raises(RayJobError, match=r"Ray Client \(ray://\) addresses are not supported.*HEAD:6379"):
            score_with_ray(bundle, inputs, tmp_path / "out", ray_address=address)
    for port in ("x", "99999", "0", "٣"):  # not a TCP port (the last: an Arabic-Indic digit)
        with pytest.raises(RayJobError, match=f"port '{port}' is not a port number"):
            score_with_ray(bundle, inputs, tmp_path / "out", ray_address=f"127.0.0.1:{port}")
    with pytest.raises(InputError, match="must not be the input, or hold it, or be inside it"):
        score_with_ray(bundle, inputs, inputs / "out")
    numbers = tmp_path / "numbers"
    numbers.mkdir()
    pq.write_table(pa.table({"text": [1, 2]}), numbers / "n.parquet")
    with pytest.raises(InputError, match="holds int64, not strings; cast it to string"):
        score_with_ray(bundle, numbers, tmp_path / "out")
    import ray

    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster():
    """A real Ray cluster of three nodes on this machine: a head with no CPU (the driver), two nodes of one CPU."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # as runtime.ray.start_ray does
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_a_node_that_dies_mid_job_loses_no_row_and_repeats_none(cluster, bundle, inputs, tmp_path):
    """Each of the two CPU nodes runs one scoring actor; one node is removed while the job runs (with it,
    its actor and the blocks in its object store), and a replacement joins. Ray restarts the actor and
    recomputes what was lost; the output is still every row once, with local scoring's answers."""
    import ray

    from seqship.runtime.ray import score_with_ray

    c, nodes = cluster
    big = tmp_path / "in"
    big.mkdir()
    names = (inputs / "a-names.txt").read_text(encoding="utf-8")
    (big / "names.txt").write_text("\n".join([names] * REPEATS) + "\n", encoding="utf-8")
    out = tmp_path / "scored"
    started, removed, seen, result = threading.Event(), threading.Event(), [], {}

    def progress(done: int, total: int) -> None:
        # A job in progress never looks finished: only a hidden temporary folder exists.
        seen.append((done, out.exists(), any(p.name.startswith(".scored.") for p in tmp_path.iterdir())))
        started.set()
        removed.wait(120)  # the driver holds its first rows while the node goes: the job cannot end before

    def job() -> None:
        try:
            result["summary"] = score_with_ray(bundle, big, out, workers=2, batch_size=256, on_progress=progress)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=job)
    worker.start()
    assert started.wait(240), "the job made no progress"
    removed_at = seen[0][0]
    c.remove_node(nodes[1])  # the node and every process on it die
    removed.set()
    c.add_node(num_cpus=1)  # what an autoscaler or KubeRay does: a replacement node
    worker.join(300)
    assert not worker.is_alive(), "the job did not finish after the node was replaced"
    assert "error" not in result, result.get("error")
    rows = REPEATS * 2500
    assert removed_at < rows, "the node was removed after the job ended"
    scorers = [a for a in ray._private.state.actors().values() if "BundleScorer" in a["ActorClassName"]]
    assert len(scorers) == 2 and sum(a["NumRestarts"] for a in scorers) >= 1, "no scoring actor died mid-job"
    assert all(not exists and partial for _, exists, partial in seen)
    local = {i: r for (f, i), r in local_answers(bundle, inputs, tmp_path).items() if f == "a-names.txt"}
    got = read_output(out)
    assert [(r["file"], r["index"]) for r in got] == [("names.txt", i) for i in range(rows)]
    for r in got:
        want = local[r["index"] % 2500]
        assert r["label"] == want["label"] and math.isclose(r["score"], want["score"], abs_tol=1e-6)
    s = result["summary"]
    assert (s.rows_in, s.rows_out, s.scored, s.errors) == (rows, rows, rows, 0)


@pytest.mark.slow
def test_parquet_parts_on_a_cluster_address_hold_the_same_answers(cluster, bundle, inputs, tmp_path):
    c, _ = cluster
    out = tmp_path / "scored"
    p = subprocess.run(
        [
            *CLI,
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--engine",
            "ray",
            "--ray-address",
            c.address,
            "--output-format",
            "parquet",
            "--top-k",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1 and "3 of 5004 texts could not be scored" in p.stderr, p.stderr
    assert "2 workers on 3 node(s)" in p.stderr  # the cluster's two CPUs, by default
    assert_same_as_local(read_output(out), local_answers(bundle, inputs, tmp_path), parquet_ids=True)
    table = pq.read_table(out / "part-00000.parquet")
    assert table.schema.field("top_k").type == pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    # A second job into the same folder replaces the first one's output whole. Its input is odd: a file name
    # that is not UTF-8 (allowed on Linux) and a string id with a lone surrogate (valid JSON, not UTF-8).
    from seqship.runtime.ray import score_with_ray

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / os.fsdecode(b"r\xe9sum\xe9.jsonl")).write_text(
        '{"id": "\\udc80x", "text": "Nguyen"}\n{"id": 7, "text": "Smith"}\n'
    )
    assert score_with_ray(bundle, odd, out, output_format="parquet").rows_in == 2
    assert sorted(x.name for x in out.iterdir()) == ["part-00000.parquet", "summary.json"]
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    assert [(r["file"], r["index"], r["id"]) for r in rows] == [
        ("r\\xe9sum\\xe9.jsonl", 0, '"\\udc80x"'),
        ("r\\xe9sum\\xe9.jsonl", 1, "7"),
    ]
    assert [r["label"] for r in rows] == [r.label for r in Predictor.load(bundle).predict(["Nguyen", "Smith"])]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows_in"] == 2 and summary["files"][0]["name"] == "r\\xe9sum\\xe9.jsonl"


def test_without_the_ray_extra_it_says_how_to_install_it(bundle, inputs, tmp_path):
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'pyarrow'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from seqship.pipeline.cli import main\n"
        "sys.argv[0] = 'pipeline'\n"
        "main()\n"
    )
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            blocker,
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(inputs / "a-names.txt"),
            "--output",
            str(tmp_path / "o"),
            "--engine",
            "ray",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "`ray` extra" in p.stderr and "Traceback" not in p.stderr, p.stderr
