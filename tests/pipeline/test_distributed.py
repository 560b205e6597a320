"""Data-parallel training: `torchrun --nproc-per-node 2 ... pipeline run all` on real data (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, invoke

REPO = Path(__file__).resolve().parents[2]


def torchrun_cmd() -> list[str]:
    """torchrun from this interpreter's environment, 2 processes on this machine, running `pipeline`."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "seqship.pipeline.cli"]


@pytest.mark.slow
def test_two_processes_train_a_model_as_good_as_one_process_and_it_passes_the_parity_gate(tiny_run, data_dir, tmp_path):
    """The same config and global batch size as the tiny run, on 2 processes: each rank, rank 0 too, reads its
    own shard of the training split (the train record says how many rows each held) and takes that shard's rows
    of every batch. Only rank 0 writes; the bundle it packages passed the parity gate (verify); its test
    accuracy is within 1.5 points of the single-process run's."""
    artifacts = tmp_path / "artifacts"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [
            *torchrun_cmd(),
            "run",
            "all",
            "--data-dir",
            str(data_dir),
            "--artifacts-dir",
            str(artifacts),
            "--run-name",
            "ddp",
            "--json",
            "--no-baseline",
            *TINY,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)  # one JSON document: rank 1 printed nothing
    assert out["ok"] and out["parity"]["passed"] and Path(out["bundle"], "manifest.json").is_file()
    train = json.loads((artifacts / "ddp" / "stages" / "train.json").read_text())
    assert train["summary"]["world_size"] == 2
    # every rank, rank 0 too, held only its own shard of the training split: rows i with i % 2 == rank
    n = len((artifacts / "ddp" / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines())
    assert [r["train_rows"] for r in train["summary"]["ranks"]] == [len(range(0, n, 2)), len(range(1, n, 2))]
    assert all(r["peak_rss_mib"] > 0 for r in train["summary"]["ranks"])
    # what needs the whole split, made from the shards' counts and lengths: the same as one process makes it
    for name in ("tokenizer.json", "model_config.json"):
        assert (artifacts / "ddp" / "train" / name).read_bytes() == Path(
            tiny_run[0], "tiny", "train", name
        ).read_bytes()
    ddp_metrics = json.loads((artifacts / "ddp" / "train" / "metrics.json").read_text())
    tiny_metrics = json.loads(Path(tiny_run[0], "tiny", "train", "metrics.json").read_text())
    assert ddp_metrics["longest_train_tokens"] == tiny_metrics["longest_train_tokens"]
    single = tiny_run[1]["metrics"]
    assert abs(out["metrics"]["test_accuracy"] - single["test_accuracy"]) <= 0.015, (out["metrics"], single)
    assert "rank 1 of 2 (gloo)" in p.stderr
    assert sorted(x.name for x in (artifacts / "ddp").iterdir() if not x.name.startswith(".")) == sorted(
        x.name for x in Path(tiny_run[0], "tiny").iterdir() if not x.name.startswith(".")
    )
    # The same command again: every stage is current, so nothing is trained, and a rank says so and how to train
    again = subprocess.run(p.args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing was trained on 2 processes" in again.stderr and "--force, or another --run-name" in again.stderr


@pytest.mark.slow
def test_under_torchrun_a_rank_s_one_line_error_is_torchrun_s_root_cause_not_a_pointer_to_its_docs(tmp_path):
    """A domain error on rank 0 (no data folder): its `Error: ...` line is on stderr, and torchrun's own report
    (the last lines it prints) names it as the root cause, through torchrun's error file."""
    missing = tmp_path / "no-such-data"
    p = subprocess.run(
        [*torchrun_cmd(), "run", "all", "--data-dir", str(missing), "--artifacts-dir", str(tmp_path / "a"), *TINY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    error = f"Error: dataset 'names': {missing / 'names'} does not exist"
    assert p.returncode == 1 and error in p.stderr, p.stderr[-3000:]
    root = p.stderr.rsplit("Root Cause (first observed failure):", 1)[-1]
    assert f"traceback : {error}" in root and "rank      : 0" in root, p.stderr[-3000:]
    assert "To enable traceback see" not in p.stderr and "a bug in seqship" not in p.stderr
    # the other rank failed only because rank 0 did: its report line says so, and it is not the root cause
    assert "rank 1: another process of this torchrun job failed" not in root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stray_env(**extra) -> dict:
    """This environment as a scheduler's container may have it: a rank of a job, without torchrun."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC") and k != "SEQSHIP_RENDEZVOUS_TIMEOUT"
    }
    return {**env, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), **extra}


def pipeline(args: list[str], env: dict) -> subprocess.CompletedProcess:
    # generous: the point is that it returns at all (it used to wait 60 minutes), not how fast
    return subprocess.run(
        [sys.executable, "-m", "seqship.pipeline.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_job_environment_without_the_other_ranks_says_what_it_waits_for_and_gives_up_with_a_clear_error(
    rank, tmp_path, data_dir
):
    """WORLD_SIZE=2 RANK MASTER_ADDR MASTER_PORT (set by a scheduler, no torchrun, nobody on the port): the command
    says at once where it joins, as which rank, and which variables sent it there; after --rendezvous-timeout
    seconds it fails with one line that says what to do. Rank 0 hosts the store and waits for the others;
    rank 1 finds nothing listening."""
    env = stray_env(RANK=rank)
    where = f"127.0.0.1:{env['MASTER_PORT']}"
    art = tmp_path / "art"
    p = pipeline(
        ["run", "all", "--data-dir", str(data_dir), "--artifacts-dir", str(art), "--rendezvous-timeout", "2"], env
    )
    assert p.returncode == 1, p.stderr
    first = p.stderr.splitlines()[0]
    assert f"joining the process group at {where} as rank {rank} of 2" in first, p.stderr
    for var in ("WORLD_SIZE=2", f"RANK={rank}", "MASTER_ADDR=127.0.0.1", f"MASTER_PORT={env['MASTER_PORT']}"):
        assert var in first
    assert "not torchrun" in first and "waiting up to 2 s" in first
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: rank {rank} of 2: the process group at {where} was not joined within 2 s"), p.stderr
    assert "unset WORLD_SIZE" in last and "--rendezvous-timeout" in last
    assert "Exception raised from" not in p.stderr and "frame #" not in p.stderr  # torch's C++ log is set aside
    assert len(p.stderr.strip().splitlines()) == 2, p.stderr
    assert not (art / "names").exists()  # nothing was read or written before joining


def test_the_rendezvous_timeout_comes_from_the_environment_too_and_a_bad_one_is_a_usage_error(tmp_path):
    art = ["--artifacts-dir", str(tmp_path)]
    p = pipeline(["-q", "run", "train", *art, "--json"], stray_env(SEQSHIP_RENDEZVOUS_TIMEOUT="1.5"))
    assert p.returncode == 1 and "not joined within 1.5 s" in p.stderr, p.stderr
    assert json.loads(p.stdout)["error_type"] == "DistributedError"
    assert "joining the process group" in p.stderr  # a warning outside torchrun: shown even with -q
    for bad in (["--rendezvous-timeout", "0"], ["--rendezvous-timeout", "-3"], ["--rendezvous-timeout", "soon"]):
        q = pipeline(["run", "all", *art, *bad], stray_env())
        assert q.returncode == 2 and "--rendezvous-timeout" in q.stderr, q.stderr
    q = pipeline(["run", "all", *art], stray_env(SEQSHIP_RENDEZVOUS_TIMEOUT="later"))
    assert q.returncode == 2 and "--rendezvous-timeout" in q.stderr, q.stderr


@pytest.mark.slow
def test_a_stray_or_bad_world_size_is_a_clear_error_not_a_bug_report(tmp_path):
    for value, message in (
        ("abc", "WORLD_SIZE='abc' is not a number"),
        ("\u00b2", "WORLD_SIZE='\u00b2' is not a number"),
        ("2", "cannot join a process group: WORLD_SIZE=2 is set (the environment, not torchrun) but not RANK"),
    ):
        env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK")}
        p = subprocess.run(
            [sys.executable, "-m", "seqship.pipeline.cli", "run", "train", "--artifacts-dir", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "WORLD_SIZE": value},
        )
        assert p.returncode == 1 and message in p.stderr and "bug in seqship" not in p.stderr, p.stderr

    base = stray_env()
    for name, value, message in (
        ("RANK", "2", "RANK='2' is not a rank below WORLD_SIZE"),
        ("RANK", "-1", "RANK='-1' is not a rank below WORLD_SIZE"),
        ("RANK", "zero", "RANK='zero' is not a rank below WORLD_SIZE"),
        ("RANK", "\u00b2", "RANK='\u00b2' is not a rank below WORLD_SIZE"),  # a digit to str.isdigit, not to int()
        ("MASTER_PORT", "99999", "MASTER_PORT='99999' is not a port number"),
        ("MASTER_ADDR", "", "but not MASTER_ADDR"),
    ):
        p = pipeline(["run", "all", "--artifacts-dir", str(tmp_path)], {**base, name: value})
        assert p.returncode == 1 and message in p.stderr and "unset WORLD_SIZE" in p.stderr, p.stderr
        assert "bug in seqship" not in p.stderr


def test_a_rank_reads_only_its_own_shard_of_a_split_and_says_where_storage_must_be_shared(tmp_path, monkeypatch):
    """Ranks other than 0 read the data stage's file themselves: rows i with i % world == rank, nothing else
    kept; a rank that cannot read it (no shared storage) says what to do, naming the rank."""
    from seqship.pipeline import distributed

    rows = [{"text": f"name {i}", "label": f"l{i % 3}"} for i in range(7)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))  # rank 1 of 2, without a process group
    assert distributed.read_shard(tmp_path, "train") == [(f"name {i}", f"l{i % 3}") for i in (1, 3, 5)]
    monkeypatch.setattr(distributed, "world", lambda: (0, 1))
    assert len(distributed.read_shard(tmp_path, "train")) == 7
    monkeypatch.setattr(distributed, "world", lambda: (2, 3))
    with pytest.raises(distributed.DistributedError, match="rank 2: cannot read its shard .*storage every machine"):
        distributed.read_shard(tmp_path / "elsewhere", "train")


def test_a_rank_whose_split_file_is_not_the_data_stage_s_or_too_short_for_the_ranks_says_so(tmp_path, monkeypatch):
    """Every rank hashes the whole file it streams: a stale copy with the same row count (another machine's mount)
    is one error naming the file and both digests, not a silent training. A split with fewer rows than ranks
    says so and what to do, not "no texts" on the rank whose shard is empty."""
    import hashlib

    from seqship.pipeline import distributed

    text = "".join(json.dumps({"text": f"name {i}", "label": "a"}) + "\n" for i in range(5))
    (tmp_path / "train.jsonl").write_text(text, encoding="utf-8")
    recorded = hashlib.sha256(text.encode()).hexdigest()
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    assert len(distributed.read_shard(tmp_path, "train", recorded)) == 2
    (tmp_path / "train.jsonl").write_text(text.replace("name 4", "name 9"), encoding="utf-8")  # same rows, other file
    stale = hashlib.sha256(text.replace("name 4", "name 9").encode()).hexdigest()
    with pytest.raises(distributed.DistributedError) as e:
        distributed.read_shard(tmp_path, "train", recorded)
    assert str(e.value).startswith(f"rank 1: {tmp_path / 'train.jsonl'} is not the file the data stage wrote")
    assert f"its sha256 is {stale}, the data stage recorded {recorded}" in str(e.value)
    monkeypatch.setattr(distributed, "world", lambda: (5, 8))  # rank 5 of 8: its shard of 5 rows is empty
    with pytest.raises(
        distributed.DistributedError, match=r"has 5 rows, fewer than the 8 ranks .* at most 5 processes"
    ):
        distributed.read_shard(tmp_path, "train", stale)


def small_names(data_dir: Path, labels: list[str], per_label: int) -> list[tuple[str, str]]:
    """The first `per_label` distinct names of each language: a small real dataset."""
    rows = []
    for lang in labels:
        names = sorted(set((data_dir / "names" / f"{lang}.txt").read_text(encoding="utf-8").split()))
        rows += [(n, lang) for n in names[:per_label]]
    return rows


@pytest.mark.slow
def test_batches_smaller_than_the_ranks_make_the_update_one_process_makes(data_dir, tmp_path):
    """--batch-size 1 on 2 processes: every batch gives one rank no row. That rank still joins the step (a zero
    gradient), so the epoch trains on every row, exactly as one process does (it used to skip every batch:
    loss 0, nothing trained). The other rank writes no temporary folder."""
    data = tmp_path / "small.jsonl"
    rows = small_names(data_dir, ["Czech", "Greek", "Japanese"], 20)
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    art, opts = str(tmp_path / "a"), ["--epochs", "1", "--embed-dim", "16", "--hidden-dim", "16", "--batch-size", "1"]
    for name in ("one", "two"):
        assert invoke("run", "data", "--data", str(data), "--artifacts-dir", art, "--run-name", name).exit_code == 0
    assert invoke("run", "train", "--artifacts-dir", art, "--run-name", "one", "--no-wide", *opts).exit_code == 0
    (tmp_path / "tmp").mkdir()
    p = subprocess.run(
        [*torchrun_cmd(), "run", "train", "--artifacts-dir", art, "--run-name", "two", "--no-wide", *opts],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = (
        json.loads((tmp_path / "a" / n / "train" / "history.json").read_text())["epochs"] for n in ("one", "two")
    )
    assert two[0]["train_loss"] > 0
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=1e-6)
    assert two[0]["val_accuracy"] == one[0]["val_accuracy"]
    metrics = [json.loads((tmp_path / "a" / n / "train" / "metrics.json").read_text()) for n in ("one", "two")]
    assert metrics[0]["test_predictions"] == metrics[1]["test_predictions"]
    assert not [x for x in (tmp_path / "tmp").iterdir() if x.name.startswith("seqship-")]


@pytest.mark.slow
def test_the_wide_part_fitted_apart_from_the_split_files_is_the_one_fitted_in_process(data_dir, tmp_path):
    """Under torchrun rank 0 holds only its shard, so the wide part (fitted on the whole training split) is fitted
    by a child process from the data stage's files: the same weights and choices as a fit in this process."""
    from seqship.pipeline.model import WideLinear
    from seqship.pipeline.train import TrainConfig, _fit_wide_apart, encode_split, fit_tokenizer
    from seqship.pipeline.wide import fit_wide

    labels, rows = ["Czech", "Greek", "Japanese"], {"train": [], "val": []}
    for lang in labels:
        names = sorted(set((data_dir / "names" / f"{lang}.txt").read_text(encoding="utf-8").split()))[:100]
        rows["train"] += [(n, lang) for n in names[:75]]
        rows["val"] += [(n, lang) for n in names[75:]]
    for split, part in rows.items():
        text = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in part)
        (tmp_path / f"{split}.jsonl").write_text(text, encoding="utf-8")
    cfg = TrainConfig(wide=True, wide_buckets=2**12)
    tok = fit_tokenizer([t for t, _ in rows["train"]], cfg)
    within = tmp_path / "stage"  # the train stage's temporary folder
    within.mkdir()
    apart = _fit_wide_apart(tmp_path, tok, labels, cfg, within)
    assert list(within.iterdir()) == []  # the child's folder is gone

    ids = {lab: i for i, lab in enumerate(labels)}
    here = WideLinear(tok.vocab_size, len(labels), apart["ngrams"], cfg.wide_buckets, tok.spec.pad_id)
    train, val = (encode_split(tok, rows[s], ids) for s in ("train", "val"))
    fitted = fit_wide(here, train, val, labels, tok.spec.pad_id, seed=cfg.seed)
    assert (apart["C"], apart["class_weight"], apart["val"]) == (fitted["C"], fitted["class_weight"], fitted["val"])
    assert sorted(apart["state"]) == sorted(here.state_dict())
    for name, value in here.state_dict().items():
        assert (apart["state"][name] == value.numpy()).all(), name


@pytest.mark.slow
def test_the_wide_child_s_failures_say_which_file_which_signal_and_which_limit(data_dir, tmp_path, monkeypatch):
    """A fit that fails in the child is one line that says why: a label the data stage did not record names the
    split file and the label; a child killed by a signal names it (SIGKILL: likely out of memory); the child's
    time limit is below the other ranks' wait, and its error says that it ran out. Nothing is left in the
    folder the child worked in."""
    from seqship.pipeline import train as training
    from seqship.pipeline.distributed import COLLECTIVE_TIMEOUT

    labels = ["Czech", "Greek"]
    rows = small_names(data_dir, labels, 20)
    for split in ("train", "val"):
        part = rows + [("Zorba", "Klingon")] if split == "val" else rows
        text = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in part)
        (tmp_path / f"{split}.jsonl").write_text(text, encoding="utf-8")
    cfg = training.TrainConfig(wide=True, wide_buckets=2**10)
    tok = training.fit_tokenizer([t for t, _ in rows], cfg)
    within = tmp_path / "stage"
    within.mkdir()
    with pytest.raises(training.TrainError) as e:
        training._fit_wide_apart(tmp_path, tok, labels, cfg, within)
    assert str(e.value).startswith(
        f"the wide part's fit (a child process of rank 0) failed: Error: {tmp_path / 'val.jsonl'}: label 'Klingon' "
        "is not one of the data stage's labels ('Czech', 'Greek')"
    )
    assert "KeyError" not in str(e.value)

    killed = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert training.child_failure(killed.returncode, "") == "killed by signal 9 (SIGKILL: out of memory?)"

    assert training.WIDE_FIT_TIMEOUT_S < COLLECTIVE_TIMEOUT.total_seconds()
    monkeypatch.setattr(training, "WIDE_FIT_TIMEOUT_S", 0.01)
    with pytest.raises(training.TrainError, match=r"ran out of its time limit of 0.01 s \(the other ranks wait 3600 s"):
        training._fit_wide_apart(tmp_path, tok, labels, cfg, within)
    assert list(within.iterdir()) == []


def test_the_wide_fit_s_child_ends_when_its_rank_is_killed():
    """torchrun kills rank 0 (another rank failed): the child fitting the wide part stops too, not fitting on for
    nobody. A real parent, killed with SIGKILL, and its real child."""
    import signal
    import time

    code = (
        "import os, subprocess, sys; "
        "child = 'import os, sys, time; from seqship.pipeline.distributed import exit_with_parent; "
        "exit_with_parent(int(sys.argv[1]), 0.05); time.sleep(120)'; "
        "p = subprocess.Popen([sys.executable, '-c', child, str(os.getpid())]); print(p.pid, flush=True); p.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())

    def running() -> bool:  # a zombie (ended, not yet reaped by its new parent) counts as ended
        try:
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False

    time.sleep(0.5)
    assert running()  # the child is watching
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    for _ in range(200):  # at most 10 s; it polls every 0.05 s
        if not running():
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
