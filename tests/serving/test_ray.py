"""`pipeline predict --engine ray`: bulk scoring on Ray Data, on a real multi-node Ray cluster simulated on
this machine (ray.cluster_utils.Cluster), reading from and writing to a real S3-compatible object store
(moto's standalone server on 127.0.0.1), while a node dies mid-job; and `pipeline check-output`."""

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
REPEATS = 40  # the big file of the fault test: 100,000 rows in ranges of 32 KiB (about 22 parts), so that the node
# goes while most ranges are still to score


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
    (empty / os.fsdecode(b"\xff.txt")).write_text("")  # a file name that is not UTF-8: named, refused
    with pytest.raises(InputError, match=r"\\xff\.txt: a file name that is not UTF-8.*rename it"):
        score_with_ray(bundle, empty, tmp_path / "empty-out")
    os.rename(empty / os.fsdecode(b"\xff.txt"), empty / "e.txt")
    assert score_with_ray(bundle, empty, tmp_path / "empty-out").rows_in == 0  # as local scoring: an empty output
    assert sorted(p.name for p in (tmp_path / "empty-out").iterdir()) == [".seqship-ray-output", "summary.json"]
    summary = json.loads((tmp_path / "empty-out" / "summary.json").read_text(encoding="utf-8"))
    assert summary["files"] == [
        {"name": "e.txt", "uri": str(empty / "e.txt"), "format": "lines", "bytes": 0, "rows": 0}
    ]
    from seqship.runtime.ray import check_output

    assert check_output(tmp_path / "empty-out") == {"files": 1, "parts": 0, "rows_in": 0, "rows": 0}
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
    for out in (inputs / "out", f"file://{inputs}/out"):  # however the output is spelled
        with pytest.raises(InputError, match="must not be the input, or hold it, or be inside it"):
            score_with_ray(bundle, inputs, out)
    import ray

    assert not ray.is_initialized()


def test_an_azure_uri_without_a_credential_is_one_error_line_not_an_abort(tmp_path):
    # pyarrow's Azure file system with no credential threw from a thread it cannot report from: the C++ runtime
    # aborted the process (SIGABRT, exit 134, "terminate called ...") instead of seqship's one-line error.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))}
    env["HOME"] = str(tmp_path)  # no `az login` either
    uri = "abfs://box@devstoreaccount1.dfs.core.windows.net/out"
    done = subprocess.run(
        [sys.executable, "-m", "seqship.pipeline.cli", "check-output", uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: {uri}: pyarrow cannot open it"), done.stderr
    assert "give it an Azure credential" in done.stderr and "terminate called" not in done.stderr
    assert done.stderr.count("\n") == 1
    from seqship.runtime.errors import InputError
    from seqship.runtime.ray import check_output

    # A credential in a URI would reach error lines, process lists (the probe's command line) and summary.json:
    # refused, and not shown in the refusal either.
    for secret_uri in (
        "abfs://box:SECRETKEY==@acct.dfs.core.windows.net/out",
        "s3://AKIA:SECRETKEY@bucket/out?endpoint_override=127.0.0.1:1",
        "abfs://box@acct.dfs.core.windows.net/out?client_id=a&client_secret=SECRETKEY&tenant_id=t",
    ):
        with pytest.raises(InputError, match="a credential in the URI") as e:
            check_output(secret_uri)
        assert "SECRETKEY" not in str(e.value) and "***" in str(e.value)
    from seqship.runtime.ray import location

    assert location("abfs://box@acct.dfs.core.windows.net/out?credential_kind=cli")  # a mode, not a secret
    with pytest.raises(InputError, match=r"az://box/out: pyarrow cannot open this file system \(Unrecognized"):
        check_output("az://box/out")  # a scheme pyarrow does not know: its own reason, not credential advice


def test_each_file_of_a_prefix_is_read_as_itself_whatever_its_name_holds(tmp_path):
    # pyarrow percent-decodes URIs: listed as file:// (as s3:// keys are), "a%41.txt" was read as the file "aA.txt"
    # (its own rows lost, another's scored twice) and names with "#", "?" or a space could not be opened at all
    from seqship.runtime.ray import input_files, open_fs

    names = ["a%41.txt", "aA.txt", "b#c.txt", "d?e.txt", "f g.txt", "é.txt"]
    for name in names:
        (tmp_path / name).write_text(f"the text of {name}\n", encoding="utf-8")
    files = input_files(f"file://{tmp_path}")
    assert sorted(f["name"] for f in files) == sorted(names)
    for f in files:
        fs, path = open_fs(f["uri"])
        with fs.open_input_stream(path) as src:
            assert src.read().decode("utf-8") == f"the text of {f['name']}\n", f["uri"]


@pytest.mark.parametrize(
    "text",
    [
        "Nguyen\r\nSchmidt\r\n\r\nRossi\r\n",  # CRLF pairs: a boundary between "\r" and "\n" is inside one line end
        "Zoë\nÅsa\r日本語\r\n한국\n\n  \nΑλέξης",  # multibyte UTF-8: a boundary inside a character
        "\r\r\n\n\rNo final line end",
    ],
)
def test_a_range_owns_the_lines_that_start_in_it_wherever_its_boundaries_fall(tmp_path, text):
    """Byte ranges of every size, so every boundary falls everywhere once: inside a CRLF pair, inside a
    character, on a line end. The ranges' lines are the file's lines (runtime.textio's one rule), each once."""
    from seqship.runtime.ray import plan_file, read_task_rows
    from seqship.runtime.textio import split_lines

    src = tmp_path / "in.txt"
    src.write_bytes(text.encode("utf-8"))
    want = split_lines(text)
    for size in range(1, len(text.encode("utf-8")) + 1):
        got = []
        for begin, end, first, rows in plan_file(src, "lines", bytes_per_task=size):
            for table in read_task_rows(0, str(src), "lines", begin, end, first, rows, "text", "id"):
                got += table.to_pylist()
        assert [r["row"] for r in got] == list(range(len(want))), size
        assert [(r["text"] or b"").decode() for r in got] == [t if t.strip() else "" for t in want], size


def test_an_actor_that_cannot_open_the_bundle_names_the_users_bundle(bundle):
    """An actor opens the bundle's bytes from a private temporary folder; its error names the user's bundle."""
    from seqship.runtime.ray import BundleScorer, RayJobError, bundle_bytes

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    shipped = bundle_bytes(bundle, manifest)
    shipped["model.onnx"] = shipped["model.onnx"][:-1] + bytes([shipped["model.onnx"][-1] ^ 1])  # one bit flipped
    with pytest.raises(RayJobError) as e:
        BundleScorer(shipped, Predictor.load(bundle).digest, shown_as="my/bundle")
    assert "my/bundle" in str(e.value) and "seqship-bundle-" not in str(e.value), e.value


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible object store (moto's standalone server) on 127.0.0.1 and a free port, reached as a
    user reaches one: the standard AWS variables (endpoint, keys, region), set for this module's processes
    (the cluster's nodes start after, and inherit them)."""
    import socket

    pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="data")
        yield client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(s3):
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


def keys(s3, prefix: str) -> dict[str, bytes]:
    found = s3.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", [])
    # (pyarrow keeps an empty "prefix/" object as a folder marker where it removed a folder's last object)
    named = [o["Key"] for o in found if o["Key"] != prefix]
    return {k[len(prefix) :]: s3.get_object(Bucket="data", Key=k)["Body"].read() for k in named}


@pytest.mark.slow
def test_a_cluster_scores_object_storage_into_object_storage_while_a_node_dies(cluster, s3, bundle, inputs, tmp_path):
    """Three node cluster, input and output on S3 (mixed .txt/.jsonl/.parquet). One CPU node is removed once
    the first part is written, with its actor, and a replacement joins: the output still holds every row
    exactly once, with local scoring's answers; the manifest check passes; a rerun into the same prefix
    replaces seqship's parts and nothing else."""
    import ray

    from seqship.runtime.errors import InputError
    from seqship.runtime.ray import RayJobError, check_output, score_with_ray

    c, nodes = cluster
    names = (inputs / "a-names.txt").read_text(encoding="utf-8")
    for f in sorted(inputs.iterdir()):
        s3.put_object(Bucket="data", Key=f"in/{f.name}", Body=f.read_bytes())
    s3.put_object(Bucket="data", Key="in/d-big.txt", Body=("\n".join([names] * REPEATS) + "\n").encode())
    s3.put_object(Bucket="data", Key="out/README.md", Body=b"the user's own object")  # not seqship's
    s3.put_object(Bucket="data", Key="out/.seqship-ray-output", Body=b"{}")  # an earlier job's output...
    s3.put_object(Bucket="data", Key="out/part-00009-000000000000000.jsonl", Body=b"{}\n")  # ...killed: no summary
    started, removed, result = threading.Event(), threading.Event(), {}
    incomplete = []

    def progress(done: int, total: int) -> None:
        if not started.is_set():  # a job in progress has no manifest: the output is not complete yet
            with pytest.raises(RayJobError, match="no summary.json"):
                check_output("s3://data/out")
            incomplete.append(done)
            started.set()
            removed.wait(120)

    def job() -> None:
        try:
            result["summary"] = score_with_ray(
                bundle,
                "s3://data/in/",
                "s3://data/out",
                workers=2,
                top_k=2,
                range_bytes=32 << 10,
                range_rows=512,
                on_progress=progress,
            )
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    worker = threading.Thread(target=job)
    worker.start()
    assert started.wait(240), "the job made no progress"
    c.remove_node(nodes[1])  # the node and every process on it die
    removed.set()
    c.add_node(num_cpus=1)  # what an autoscaler or KubeRay does: a replacement node
    worker.join(300)
    assert not worker.is_alive(), "the job did not finish after the node was replaced"
    assert "error" not in result, result.get("error")
    s = result["summary"]
    big = REPEATS * 2500
    assert incomplete and incomplete[0] < s.rows_in, "the node was removed after the job ended"
    scorers = [a for a in ray._private.state.actors().values() if "RangeScorer" in a["ActorClassName"]]
    assert sum(a["NumRestarts"] for a in scorers) >= 1 or any(a["State"] == "DEAD" for a in scorers), scorers
    out = keys(s3, "out/")
    assert out["README.md"] == b"the user's own object"
    assert "part-00009-000000000000000.jsonl" not in out, "the killed job's part was left"
    local_dir = tmp_path / "local-out"
    local_dir.mkdir()
    for name, body in out.items():
        (local_dir / name).write_bytes(body)
    rows = read_output(local_dir)
    local = local_answers(bundle, inputs, tmp_path)
    assert_same_as_local([r for r in rows if r["file"] != "d-big.txt"], local)
    got = [r for r in rows if r["file"] == "d-big.txt"]
    assert [r["index"] for r in got] == list(range(big)), "rows missing, repeated or out of order"
    for r in got:
        want = local[("a-names.txt", r["index"] % 2500)]
        assert r["label"] == want["label"] and math.isclose(r["score"], want["score"], abs_tol=1e-6)
    assert (s.rows_in, s.scored, s.errors) == (5004 + big, 5001 + big, 3)
    assert check_output("s3://data/out/") == {
        "files": 4,
        "parts": len(s.parts),
        "rows_in": s.rows_in,
        "rows": s.rows_out,
    }
    part = s.parts[0]["name"]  # a part changed, or one the manifest does not list: the check fails, naming it
    s3.put_object(Bucket="data", Key=f"out/{part}", Body=out[part] + b"{}\n")
    s3.put_object(Bucket="data", Key="out/part-00007-000000000000000.jsonl", Body=b"{}\n")
    with pytest.raises(RayJobError, match=rf"2 problem\(s\): {part}: its bytes .*part-00007-0+\.jsonl: a part the"):
        check_output("s3://data/out")
    # Input the cluster's tasks cannot read is refused by name, before any output is touched.
    numbers = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    s3.put_object(Bucket="data", Key="numbers/n.parquet", Body=numbers.getvalue().to_pybytes())
    s3.put_object(Bucket="data", Key="numbers/z.txt", Body=b"PAR1 not text")
    with pytest.raises(InputError, match="s3://data/numbers/n.parquet: column 'text' holds int64, not strings"):
        score_with_ray(bundle, "s3://data/numbers", "s3://data/out")
    # A rerun with other ranges into the same prefix: seqship's parts replaced, the user's object kept.
    s3.delete_object(Bucket="data", Key="in/d-big.txt")
    again = score_with_ray(bundle, "s3://data/in", "s3://data/out/", workers=2, top_k=2)
    out = keys(s3, "out/")
    assert sorted(out) == sorted(
        [".seqship-ray-output", "README.md", "summary.json", *(p["name"] for p in again.parts)]
    )
    assert len(again.parts) == 3 and out["README.md"] == b"the user's own object"
    check_output("s3://data/out")


@pytest.mark.slow
def test_parquet_parts_on_a_cluster_address_hold_the_same_answers(cluster, s3, bundle, inputs, tmp_path):
    """The command line, from an S3 prefix into a local folder."""
    c, _ = cluster
    for f in sorted(inputs.iterdir()):
        s3.put_object(Bucket="data", Key=f"cli-in/{f.name}", Body=f.read_bytes())
    out = tmp_path / "scored"
    cmd = [*CLI, "predict", "--bundle", str(bundle), "--input", "s3://data/cli-in/", "--output", str(out), "--engine", "ray",
           "--ray-address", c.address, "--output-format", "parquet", "--top-k", "2"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "3 of 5004 texts could not be scored" in p.stderr, p.stderr
    assert "2 workers on 3 node(s)" in p.stderr  # the cluster's two CPUs, by default
    assert_same_as_local(read_output(out), local_answers(bundle, inputs, tmp_path), parquet_ids=True)
    table = pq.read_table(out / "part-00000-000000000000000.parquet")
    assert table.schema.field("top_k").type == pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    p = subprocess.run([*CLI, "check-output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "complete: 5004 rows in 3 parts" in p.stdout, p.stderr
    # Actors that cannot open the bundle (no CUDA on these nodes): one line from seqship, no Ray traceback.
    p = subprocess.run([*cmd, "--providers", "cuda"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("Error: ") and "CUDA" in p.stderr, p.stderr
    assert "the Ray job failed" not in p.stderr and "seqship.runtime" not in p.stderr, p.stderr  # seqship's words
    # A second job into the same folder replaces the first one's parts. A string id with a lone surrogate
    # (valid JSON, not UTF-8) keeps its JSON form.
    from seqship.runtime.ray import score_with_ray

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "résumé.jsonl").write_text('{"id": "\\udc80x", "text": "Nguyen"}\n{"id": 7, "text": "Smith"}\n')
    during = []

    def progress(done: int, total: int) -> None:  # the old manifest is gone before the first new part lands
        during.append(sorted(x.name for x in out.iterdir()))

    assert score_with_ray(bundle, odd, out, output_format="parquet", on_progress=progress).rows_in == 2
    assert during and all("summary.json" not in names for names in during), during
    assert sorted(x.name for x in out.iterdir()) == [
        ".seqship-ray-output",
        "part-00000-000000000000000.parquet",
        "summary.json",
    ]
    rows = pq.read_table(out / "part-00000-000000000000000.parquet").to_pylist()
    assert [(r["file"], r["index"], r["id"]) for r in rows] == [
        ("résumé.jsonl", 0, '"\\udc80x"'),
        ("résumé.jsonl", 1, "7"),
    ]
    assert [r["label"] for r in rows] == [r.label for r in Predictor.load(bundle).predict(["Nguyen", "Smith"])]


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
