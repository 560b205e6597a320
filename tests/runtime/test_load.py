"""Many threads, big files, killed runs: the predictor under load."""

import json
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from seqship.runtime import Predictor
from tests.conftest import invoke

THREADS, CALLS = 8, 2000


@pytest.fixture(scope="module")
def real_texts(tiny_run):
    path = tiny_run[0] / "tiny" / "data" / "test.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_one_predictor_shared_by_8_threads_gives_the_single_threaded_results(tiny_run, real_texts):
    # batch_size=4 with calls of up to 12 texts: most calls go through the shared worker pool too.
    predictor = Predictor.load(tiny_run[1]["bundle"], providers="cpu", batch_size=4, intra_op_num_threads=2)
    rng = random.Random(0)
    batches = [[rng.choice(real_texts) for _ in range(rng.randint(1, 12))] for _ in range(THREADS * CALLS)]
    expected = [predictor.logits(b) for b in batches]  # single-threaded, first
    failures, done = [], [0] * THREADS

    def worker(t: int) -> None:
        try:
            for i in range(t, len(batches), THREADS):
                got = predictor.logits(batches[i])
                if not np.array_equal(got, expected[i]):
                    failures.append((i, float(np.abs(got - expected[i]).max())))
                done[t] += 1
        except Exception as e:  # any error in a thread is a failure of this test, not a lost thread
            failures.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert done == [CALLS] * THREADS


def write_lines(path, texts, n):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(texts[i % len(texts)] + "\n")


def test_bulk_predict_keeps_order_and_answers_every_line(tiny_run, real_texts, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate(real_texts[:300])] + [{"id": "blank", "text": "  "}]
    src.write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
        + '"a bare JSON string"\n'
        + "not json\n"
        + '{"id": "no-text", "txt": "x"}\n'
    )
    out = tmp_path / "out.jsonl"
    result = invoke(
        "predict", "--bundle", tiny_run[1]["bundle"], "--input", str(src), "--output", str(out), "--top-k", "2"
    )
    assert result.exit_code == 1 and "3 of 304 texts could not be scored" in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(304))
    assert lines[303]["id"] == "no-text" and "an object with a 'text' key" in lines[303]["error"]  # the id kept
    assert [x.get("id") for x in lines[:301]] == [r["id"] for r in rows]
    assert "#300 is empty" in lines[300]["error"] and "line 303: not JSON" in lines[302]["error"]
    predictor = Predictor.load(tiny_run[1]["bundle"], providers="cpu")
    expected = predictor.predict(real_texts[:300], top_k=2)
    assert [x["label"] for x in lines[:300]] == [r.label for r in expected]
    assert lines[301]["label"] and lines[0]["provider"] == "CPUExecutionProvider"


# VmHWM, not getrusage: ru_maxrss survives exec, so a child of a large pytest process would report
# pytest's own peak. VmHWM belongs to the process's current address space.
PEAK_RSS = """
import sys
from seqship.pipeline.cli import main
sys.argv = ["pipeline", "predict", "--bundle", sys.argv[1], "--input", sys.argv[2], "--output", sys.argv[3]]
try:
    main()
except SystemExit as e:
    code = e.code
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_KB", hwm.split()[1], file=sys.stderr)
"""


def peak_rss_kb(bundle, src, dst) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, bundle, str(src), str(dst)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return int(out.stderr.rsplit("PEAK_KB", 1)[1].split()[0])


@pytest.mark.slow
def test_bulk_memory_does_not_grow_with_the_input(tiny_run, real_texts, tmp_path):
    bundle = tiny_run[1]["bundle"]
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    write_lines(small, real_texts, 20_000)
    write_lines(big, real_texts, 200_000)
    peak_small = peak_rss_kb(bundle, small, tmp_path / "small.jsonl")
    peak_big = peak_rss_kb(bundle, big, tmp_path / "big.jsonl")
    assert sum(1 for _ in open(tmp_path / "big.jsonl")) == 200_000
    print(f"peak RSS: 20,000 texts {peak_small / 1024:.1f} MiB, 200,000 texts {peak_big / 1024:.1f} MiB")
    assert peak_big <= peak_small * 1.10, (peak_small, peak_big)


def test_a_killed_bulk_run_leaves_no_half_written_output(tiny_run, real_texts, tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.jsonl"
    write_lines(src, real_texts, 400_000)
    dst.write_text('{"previous": "output"}\n')  # an earlier, complete result under the final name
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seqship.pipeline.cli",
            "predict",
            "--bundle",
            tiny_run[1]["bundle"],
            "--input",
            str(src),
            "--output",
            str(dst),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    partial = []
    while time.time() < deadline and not partial:  # wait until it is demonstrably mid-write
        partial = [p for p in tmp_path.glob(".out.jsonl.*.partial") if p.stat().st_size > 10_000]
        time.sleep(0.05)
    assert partial, "the bulk run never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert dst.read_text() == '{"previous": "output"}\n'  # untouched: never half-written


def test_bulk_survives_a_bom_and_an_id_that_is_not_valid_utf8(tiny_run, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "\ufeff"
        + json.dumps({"id": "a", "text": "Nguyen"})
        + "\n"
        + json.dumps({"id": "\ud800", "text": "Rossi"})
        + "\n",
        encoding="utf-8",
    )
    from seqship.runtime.bulk import score_file

    predictor = Predictor.load(tiny_run[1]["bundle"], providers="cpu")
    stats = score_file(predictor, src, out)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert stats.scored == 2 and lines[1]["id"] == "\ud800"
    assert lines[0]["num_tokens"] == 6  # the byte-order mark is not read as a token
