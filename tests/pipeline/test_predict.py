"""`pipeline predict`'s library side (pipeline.predict), called directly: decoding arguments and stdin,
writing one JSON line per text as it is scored, and what a runtime-only install is told. (That it runs
without torch: test_hardening's test_without_torch_scoring_still_works.)"""

from __future__ import annotations

import json
import os

import pytest

from seqship.pipeline import predict
from seqship.pipeline.cli import missing_extra
from seqship.runtime.errors import SeqshipError


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return predict.load_predictor(tiny_run[1]["bundle"], providers="cpu")


def test_arguments_are_read_as_utf8_bytes_and_a_non_utf8_one_is_an_error_at_its_index():
    good = os.fsdecode("Müller".encode())  # what Python hands over for these bytes, whatever the locale
    bad = os.fsdecode(b"Sch\xffmidt")
    texts = predict.decode_arguments([good, bad, "Nguyen"])
    assert texts.texts == ["Müller", "", "Nguyen"]
    assert list(texts.undecodable) == [1] and "argument 2: not UTF-8" in texts.undecodable[1]


def test_stdin_lines_drop_the_bom_crlf_and_blank_lines_and_keep_each_lines_index():
    texts = predict.decode_lines(b"\xef\xbb\xbfNguyen\r\nSch\xffmidt\n\nRossi\rKim\n\n  \n")
    assert texts.texts == ["Nguyen", "", "Rossi", "Kim"]  # a blank line is skipped (and counted), as in training
    assert texts.indexes == [0, 1, 3, 4] and texts.skipped == 3  # the index is the line number - 1
    assert list(texts.undecodable) == [1] and texts.undecodable[1].startswith("line 2: not UTF-8")
    assert predict.decode_lines(b"").texts == []


def test_each_text_is_written_as_one_json_line_in_order_and_errors_are_counted(predictor):
    lines = []
    texts = predict.decode_lines(b"Nguyen\n\xff\n   \nSchmidt\n")
    errors = predict.write_results(predictor, texts, lines.append, top_k=2)
    rows = [json.loads(line) for line in lines]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    assert [r["index"] for r in rows] == [0, 1, 3] and errors == 1  # the blank line 3 is skipped
    assert "not UTF-8" in rows[1]["error"] and "error" not in rows[2]
    assert (
        rows[0]["text"] == "Nguyen" and len(rows[0]["top_k"]) == 2 and rows[0]["label"] == rows[0]["top_k"][0]["label"]
    )


def test_a_file_without_output_is_streamed_to_the_writer_in_input_order(predictor, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\na,Nguyen\nb,\nc,Schmidt\n", encoding="utf-8")
    lines = []
    stats = predict.score_file(predictor, src, None, lines.append, fmt="auto", top_k=1, text_column="text")
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == ["a", "b", "c"] and "error" in rows[1]
    assert (stats.texts, stats.errors) == (3, 1)
    out = tmp_path / "out.jsonl"
    predict.score_file(predictor, src, out, lines.append, fmt="auto", top_k=1, text_column="text")
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == rows
    assert len(lines) == 3  # with an output file, nothing more is written to the writer


def test_top_k_above_the_label_count_and_a_run_folder_given_as_the_bundle_are_refused(tiny_run):
    artifacts, summary = tiny_run
    labels = len(predict.load_predictor(summary["bundle"], providers="cpu").labels)
    with pytest.raises(SeqshipError, match=f"the bundle has only {labels} labels"):
        predict.load_predictor(summary["bundle"], providers="cpu", top_k=labels + 1)
    with pytest.raises(SeqshipError, match="did you mean --bundle .*tiny/bundle"):
        predict.load_predictor(artifacts / "tiny", providers="cpu")


def test_texts_files_are_read_as_non_blank_utf8_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes("Nguyen\n\n  \nMüller\n".encode())
    assert predict.read_texts(f) == ["Nguyen", "Müller"]
    f.write_bytes(b"Nguyen\n\xff bad\n")
    with pytest.raises(SeqshipError, match="cannot be read as UTF-8"):
        predict.read_texts(f)
    f.write_bytes(b"\xff\xfeN\x00g\x00")
    with pytest.raises(SeqshipError, match="UTF-16 or UTF-32 text .*re-encode it as UTF-8"):
        predict.read_texts(f)
    assert predict.parse_providers("CUDA") == "cuda"
    assert predict.parse_providers("CUDAExecutionProvider, CPUExecutionProvider") == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize("module, extra", [("starlette", "serve"), ("ray", "ray"), ("sklearn", "baseline")])
def test_only_the_train_extras_hint_names_torch(module, extra):
    hint = missing_extra(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert f"pip install -e '.[{extra}]'" in hint and "torch" not in hint, hint
    train = missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert "pip install torch==" in train and "'.[train]'" in train
    assert missing_extra(ModuleNotFoundError("No module named 'nothing'", name="nothing")) is None


def test_a_reader_that_goes_away_stops_predict_quietly_with_sigpipes_status(tiny_run):
    # `pipeline predict ... | head -1`: the reader closes the pipe; that is no error of seqship's to report.
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "seqship.pipeline.cli", "-q", "predict", "--bundle", tiny_run[1]["bundle"]]
    proc = subprocess.Popen([*cmd, *(f"N{i}" for i in range(3000))], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(proc.stdout.readline())["index"] == 0
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Error" not in err and "Traceback" not in err, err


def test_the_train_extras_hint_names_the_cpu_build_and_no_other_hint_names_torch():
    for module, extra in (("torch", "train"), ("starlette", "serve"), ("ray", "ray"), ("sklearn", "baseline")):
        hint = missing_extra(ModuleNotFoundError(name=module))
        assert f".[{extra}]" in hint
        assert ("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in hint) == (extra == "train"), hint
