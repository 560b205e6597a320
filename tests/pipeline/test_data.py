"""The data stage on the real names data and on users' own files."""

import csv
import dataclasses
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from seqship.pipeline.data import (
    REGISTRY,
    DataConfig,
    DataError,
    cached,
    clean,
    download_dataset,
    locate,
    prepare,
    read_split,
    read_table,
    readers,
)
from seqship.runtime.fsio import temp_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def names(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    cfg = DataConfig()
    return prepare(cfg, locate(cfg, str(data_dir)), out), out


def test_names_are_cleaned_and_deduplicated(names):
    summary, _ = names
    c = summary["counts"]
    assert c["junk_dropped"] == 23  # "To The First Page" lines in Russian.txt
    assert c["duplicates_removed"] > 2000  # e.g. Arabic: 2,000 lines but 108 unique names
    assert c["unique_pairs"] == sum(summary["splits"].values())
    assert (
        c["rows_read"]
        == c["invalid_dropped"] + c["empty_dropped"] + c["junk_dropped"] + c["duplicates_removed"] + c["unique_pairs"]
    )
    assert len(summary["labels"]) == 18


def test_split_is_grouped_by_text_and_stratified_by_label(names):
    summary, out = names
    parts = {s: read_split(out, s) for s in ("train", "val", "test")}
    texts = {s: {t for t, _ in rows} for s, rows in parts.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]
    total = sum(len(r) for r in parts.values())
    assert 0.09 < len(parts["test"]) / total < 0.11
    for label in summary["labels"]:  # every class, even Portuguese (74 lines), is in val and test
        assert summary["per_label"]["test"].get(label, 0) >= 1 and summary["per_label"]["val"].get(label, 0) >= 1


def test_fingerprint_is_reproducible_and_seed_dependent(names, data_dir, tmp_path):
    summary, _ = names
    again = prepare(DataConfig(), locate(DataConfig(), str(data_dir)), tmp_path)
    assert again["fingerprint"] == summary["fingerprint"]
    (tmp_path / "s1").mkdir()
    other = prepare(DataConfig(seed=1), locate(DataConfig(), str(data_dir)), tmp_path / "s1")
    assert other["fingerprint"] != summary["fingerprint"]


def test_clean_normalises_strips_and_keeps_a_text_with_two_labels_once_per_label():
    rows = [("Cafe\u0301 ", "fr"), ("Café", "fr"), ("", "fr"), ("Café", "es"), ("junk", "x")]
    kept, counts = clean(rows, junk=("junk",))
    assert kept == [("Café", "fr"), ("Café", "es")]
    assert counts["duplicates_removed"] == 1 and counts["empty_dropped"] == 1 and counts["junk_dropped"] == 1
    assert counts["texts_with_several_labels"] == 1


def test_user_csv_tsv_jsonl_and_label_folders(tmp_path):
    rows = [(f"text {i}", "pos" if i % 2 else "neg") for i in range(40)]
    (tmp_path / "d.csv").write_text("review,label\n" + "".join(f'"{t}, quoted",{lab}\n' for t, lab in rows))
    (tmp_path / "d.tsv").write_text("sentence\tlabel\n" + "".join(f'{t} "stray\t{lab}\n' for t, lab in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"t": t, "y": lab}) + "\n" for t, lab in rows))
    folder = tmp_path / "folder"
    folder.mkdir()
    for lab in ("neg", "pos"):
        (folder / f"{lab}.txt").write_text("\n".join(t for t, l2 in rows if l2 == lab) + "\nline with \u0085 inside")
    cases = [
        ("d.csv", "review", "label"),
        ("d.tsv", "sentence", "label"),
        ("d.jsonl", "t", "y"),
        ("folder", "text", "label"),
    ]
    for name, text_col, label_col in cases:
        out = tmp_path / f"out-{name}"
        out.mkdir()
        cfg = DataConfig(dataset=None, data=str(tmp_path / name), text_column=text_col, label_column=label_col)
        summary = prepare(cfg, locate(cfg), out)
        assert summary["labels"] == ["neg", "pos"], name
        assert summary["counts"]["unique_pairs"] >= 40, name
    assert any(
        "inside" in t
        for t, _ in read_split(tmp_path / "out-folder", "train")
        + read_split(tmp_path / "out-folder", "test")
        + read_split(tmp_path / "out-folder", "val")
    )


def test_user_data_errors_name_the_problem(tmp_path):
    def run(name, content, **kw):
        path = tmp_path / name
        path.write_bytes(content)
        cfg = DataConfig(dataset=None, data=str(path), **kw)
        (tmp_path / "o").mkdir(exist_ok=True)
        return prepare(cfg, locate(cfg), tmp_path / "o")

    with pytest.raises(
        DataError, match=r"no column 'text' \(columns: \['review', 'label'\]\); choose one with --text-column"
    ):
        run("a.csv", b"review,label\nx,1\n")
    with pytest.raises(DataError, match="only one label"):
        run("b.csv", b"text,label\nx,1\ny,1\n")
    with pytest.raises(DataError, match=r"c.csv, line 3: bytes that are not UTF-8"):
        run("c.csv", b"text,label\nx,1\n\xff\xfe,0\n")
    with pytest.raises(DataError, match="empty file"):
        run("d.csv", b"")
    with pytest.raises(DataError, match="no such file"):
        locate(DataConfig(dataset=None, data=str(tmp_path / "missing.csv")))


def test_missing_data_dir_and_offline_download_errors_name_the_option_and_variable(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"names does not exist; --data-dir/SEQSHIP_DATA_DIR must point"):
        locate(DataConfig(), str(tmp_path))
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)
    monkeypatch.setenv("SEQSHIP_NAMES_URL", "http://127.0.0.1:9/data.zip")  # nothing listens there
    with pytest.raises(
        DataError, match=r"download from .* failed .*Offline\? Pass --data-dir DIR or set SEQSHIP_DATA_DIR"
    ):
        locate(DataConfig(), cache_dir=str(tmp_path / "cache"))


def published_source(name, data_dir, tamper=None):
    """The dataset's public source rebuilt, in its published layout and encoding, from the local copy."""
    ds = REGISTRY[name]
    dl, local = ds.download, data_dir / ds.folder
    if name == "sst2":  # GLUE's train.tsv = the local train.tsv + dev.tsv; GLUE's dev.tsv = the local test.tsv
        dev = (local / "dev.tsv").read_bytes().split(b"\n", 1)[1]
        stored = {
            "train.tsv": (local / "train.tsv").read_bytes().rstrip(b"\n") + b"\n" + dev,
            "test.tsv": (local / "test.tsv").read_bytes(),
        }
    else:
        stored = {n: (local / n).read_bytes() for _, n in dl.members}
    if dl.transcode:
        stored = {n: b.decode("utf-8").encode(dl.transcode) for n, b in stored.items()}
    if tamper:
        stored[tamper] += b"x"
    if dl.kind == "file":
        return stored[dl.members[0][1]]
    buf = io.BytesIO()
    if dl.kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            for member, n in dl.members:
                z.writestr(member, stored[n])
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for member, n in dl.members:
                info = tarfile.TarInfo(member)
                info.size = len(stored[n])
                t.addfile(info, io.BytesIO(stored[n]))
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_download_verifies_stores_and_reads_like_the_local_copy(name, data_dir, tmp_path, monkeypatch):
    # The real download path (urllib, archive reading, checksums, atomic move), fed the published layout
    # through a file:// URL: there is no network here. The downloaded data must split exactly like the local copy.
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)  # no local copy: the download path
    ds = REGISTRY[name]
    source = tmp_path / "source"
    source.write_bytes(published_source(name, data_dir))
    monkeypatch.setenv(ds.download.env_var(name), source.as_uri())
    if ds.download.archive_md5:  # SST-2's checksum is GLUE's archive; ours is rebuilt, so trust its md5 here only
        monkeypatch.setitem(
            REGISTRY,
            name,
            dataclasses.replace(
                ds, download=dataclasses.replace(ds.download, archive_md5=hashlib.md5(source.read_bytes()).hexdigest())
            ),
        )
    cache = tmp_path / "cache"
    folder = locate(DataConfig(dataset=name), cache_dir=str(cache))
    assert folder == cache / name and json.loads((folder / "download.json").read_text())["dataset"] == name
    source.unlink()  # a second call is served from the verified cache, without the network
    assert locate(DataConfig(dataset=name), cache_dir=str(cache)) == folder
    victim = folder / ds.download.members[-1][1]
    good = victim.read_bytes()
    victim.write_bytes(good + b"x")  # changed in the cache after the download: re-checked, not trusted
    with pytest.raises(DataError, match="download from .* failed"):
        locate(DataConfig(dataset=name), cache_dir=str(cache))
    victim.write_bytes(good)
    cfg = DataConfig(dataset=name)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    downloaded = prepare(cfg, folder, tmp_path / "a")
    local = prepare(cfg, locate(cfg, str(data_dir)), tmp_path / "b")
    assert downloaded["fingerprint"] == local["fingerprint"] and downloaded["splits"] == local["splits"]


@pytest.mark.parametrize("name", ["names", "mr", "waimai"])
def test_a_download_that_fails_its_checksum_is_refused_and_leaves_nothing(name, data_dir, tmp_path, monkeypatch):
    ds = REGISTRY[name]
    bad_file = ds.download.sha256[-1][0]
    source = tmp_path / "bad"
    source.write_bytes(published_source(name, data_dir, tamper=bad_file))
    monkeypatch.setenv(ds.download.env_var(name), source.as_uri())
    with pytest.raises(DataError, match=f"{bad_file} has sha256 .* refusing it"):
        download_dataset(ds, tmp_path / "cache")
    # Nothing but the (empty) lock file: no dataset folder, no temporary.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{name}.lock"]
    (tmp_path / "junk").write_bytes(b"<html>not an archive</html>")
    monkeypatch.setenv(ds.download.env_var(name), (tmp_path / "junk").as_uri())
    with pytest.raises(DataError, match="not a readable|sha256"):
        download_dataset(ds, tmp_path / "cache")


@pytest.mark.parametrize("kind", ["folder", "file", "link"])
def test_a_cache_entry_seqship_did_not_make_is_never_replaced(kind, data_dir, tmp_path, monkeypatch):
    # --cache-dir (or SEQSHIP_CACHE_DIR) pointed at a folder of the user's that holds names/: the download
    # must not replace it (it used to, whole), whatever the entry is.
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)
    source = tmp_path / "source"
    source.write_bytes(published_source("names", data_dir))
    monkeypatch.setenv(REGISTRY["names"].download.env_var("names"), source.as_uri())
    cache, mine = tmp_path / "cache", tmp_path / "mine"
    cache.mkdir(), mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    entry = cache / "names"
    if kind == "folder":
        entry.mkdir()
        (entry / "notes.txt").write_text("mine\n")
    elif kind == "file":
        entry.write_text("mine\n")
    else:
        entry.symlink_to(mine, target_is_directory=True)
    with pytest.raises(DataError, match="is not a download seqship made .* move it away, or set SEQSHIP_CACHE_DIR"):
        locate(DataConfig(dataset="names"), cache_dir=str(cache))
    assert (mine / "notes.txt").read_text() == "mine\n"
    assert (
        entry.is_symlink()
        if kind == "link"
        else (entry / "notes.txt" if kind == "folder" else entry).read_text() == "mine\n"
    )


def test_sst2_download_is_refused_unless_it_is_the_published_glue_archive(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)
    source = tmp_path / "SST-2.zip"
    source.write_bytes(published_source("sst2", data_dir))
    monkeypatch.setenv("SEQSHIP_SST2_URL", source.as_uri())
    with pytest.raises(DataError, match="md5 .*, expected the published 9f81648d4199384278b86e315dac217c; refusing it"):
        locate(DataConfig(dataset="sst2"), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "sst2").exists()


def test_every_registry_download_is_checked_by_a_checksum():
    for name, ds in REGISTRY.items():
        dl = ds.download
        assert dl is not None and (dl.archive_md5 or {n for n, _ in dl.sha256} == {n for _, n in dl.members}), name
        assert dl.url.startswith("https://"), name


@pytest.mark.parametrize(
    "name, labels, test_size",
    [
        ("waimai", 2, None),
        ("chnsenticorp", 2, None),
        ("shopping-cats", 10, None),
        ("sst2", 2, 872),
        ("mr", 2, None),
    ],
)
def test_registry_datasets_read_their_published_files(data_dir, tmp_path, name, labels, test_size):
    cfg = DataConfig(dataset=name)
    summary = prepare(cfg, locate(cfg, str(data_dir)), tmp_path)
    assert len(summary["labels"]) == labels
    assert (
        summary["counts"]["invalid_dropped"] == 0 and summary["row_issues"]["dropped"] == {}
    )  # published data: nothing invalid
    parts = {s: read_split(tmp_path, s) for s in ("train", "val", "test")}
    train_texts = {t for t, _ in parts["train"]}
    assert not train_texts & {t for t, _ in parts["test"]} and not train_texts & {t for t, _ in parts["val"]}
    if test_size:  # a published test split is used as it is, never re-split
        assert summary["splits"]["test"] == test_size
    assert not any(t.startswith("\ufeff") for rows in parts.values() for t, _ in rows)


def test_registry_dataset_without_a_local_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)
    monkeypatch.setenv("SEQSHIP_WAIMAI_URL", "http://127.0.0.1:9/waimai_10k.csv")  # nothing listens there
    with pytest.raises(
        DataError,
        match=r"'waimai': no local copy and the download from .* failed .*Offline\? "
        r"Pass --data-dir DIR or set SEQSHIP_DATA_DIR=DIR, where DIR holds chinese/",
    ):
        locate(DataConfig(dataset="waimai"), cache_dir=str(tmp_path))


# --- users' files: what is dropped and counted, what is refused -------------------------------------------------


def write_jsonl(path, objs):
    """One JSON object (or a raw line, given as a str) per line."""
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


def prepare_user(path, tmp_path, **kw):
    out = tmp_path / f"out-{path.name}"
    out.mkdir()
    cfg = DataConfig(dataset=None, data=str(path), **kw)
    summary = prepare(cfg, locate(cfg), out)
    texts = {t for s in ("train", "val", "test") for t, _ in read_split(out, s)}
    return summary, texts


def test_jsonl_rows_without_a_usable_label_or_text_are_dropped_counted_and_warned(tmp_path, caplog):
    good = [{"text": f"good {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    bad = [
        {"text": "label is null", "label": None},
        {"text": "label is empty", "label": ""},
        {"text": "label is spaces", "label": "   "},
        {"text": "label is missing"},
        {"text": None, "label": "pos"},
        {"label": "neg"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", good[:10] + bad + good[10:] + [{"text": "padded label", "label": " pos "}])
    with caplog.at_level("WARNING", logger="seqship.pipeline.data"):
        summary, texts = prepare_user(path, tmp_path)
    assert summary["labels"] == ["neg", "pos"]  # no class "None", no class ""
    assert summary["row_issues"]["dropped"] == {
        "label_empty": 2,
        "label_missing": 1,
        "label_null": 1,
        "text_missing": 1,
        "text_null": 1,
    }
    assert summary["row_issues"]["normalised"] == {"label_whitespace": 1}
    c = summary["counts"]
    assert c["invalid_dropped"] == 6 and c["rows_read"] == 27
    assert (
        c["rows_read"]
        == c["invalid_dropped"] + c["empty_dropped"] + c["junk_dropped"] + c["duplicates_removed"] + c["unique_pairs"]
    )
    assert "None" not in texts and not any(t.startswith("label is") for t in texts) and "padded label" in texts
    warned = " | ".join(r.getMessage() for r in caplog.records)
    assert "dropped 1 row(s) with a null label (first: " + str(path) + ", line 11)" in warned
    assert "with a null text (first: " + str(path) + ", line 15)" in warned


def test_jsonl_integer_labels_are_read_as_strings_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "ints.jsonl", [{"text": f"t{i}", "label": i % 3} for i in range(30)])
    summary, _ = prepare_user(path, tmp_path)
    assert summary["labels"] == ["0", "1", "2"]
    assert summary["row_issues"]["normalised"] == {"label_integer": 30}


def test_jsonl_integer_and_string_label_of_one_spelling_are_refused_naming_both(tmp_path):
    rows = [{"text": f"t{i}", "label": "0"} for i in range(5)] + [
        {"text": "x", "label": "1"},
        {"text": "y", "label": 1},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"mixed.jsonl: label 1 \(a JSON integer, first on line 7\) and label \"1\" "
        r"\(a JSON string, first on line 6\) would merge into one class; write every label",
    ):
        prepare_user(path, tmp_path)


@pytest.mark.parametrize(
    "value, kind",
    [
        (["pos"], "a list"),
        (True, r"a boolean \(true\)"),
        (1.0, r"a number \(1.0\)"),
        ({"name": "pos"}, "an object"),
    ],
)
def test_jsonl_labels_that_are_not_strings_or_integers_are_refused_naming_the_line(tmp_path, value, kind):
    path = write_jsonl(
        tmp_path / "l.jsonl",
        [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": value}],
    )
    with pytest.raises(
        DataError, match=rf"l.jsonl, line 3: the label field 'label' is {kind}; labels must be strings or integers"
    ):
        prepare_user(path, tmp_path)


@pytest.mark.parametrize(
    "raw, kind",
    [
        ('{"text": 42, "label": "pos"}', r"a number \(42\)"),
        ('{"text": ["a", "b"], "label": "pos"}', "a list"),
        ('{"text": false, "label": "pos"}', r"a boolean \(false\)"),
        ('{"text": NaN, "label": "pos"}', r"a number \(NaN\)"),
    ],
)
def test_jsonl_texts_that_are_not_strings_are_refused_never_stringified(tmp_path, raw, kind):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "pos"}, raw, {"text": "b", "label": "neg"}])
    with pytest.raises(DataError, match=rf"t.jsonl, line 2: the text field 'text' is {kind}, not a string; quote it"):
        prepare_user(path, tmp_path)


@pytest.mark.parametrize(
    "raw, field", [('{"text": "a\\ud800", "label": "pos"}', "text"), ('{"text": "a", "label": "p\\udc00"}', "label")]
)
def test_jsonl_lone_surrogates_are_refused_naming_the_line(tmp_path, raw, field):
    # valid JSON, not text: it once reached the split writer and failed there as "a bug in seqship"
    path = write_jsonl(
        tmp_path / "s.jsonl", [{"text": "ok \U0001f600", "label": "pos"}, raw, {"text": "b", "label": "neg"}]
    )
    with pytest.raises(DataError, match=rf"s.jsonl, line 2: the {field} field holds a lone surrogate"):
        prepare_user(path, tmp_path)


def test_jsonl_field_absent_from_every_line_names_the_option(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"review": "a", "label": "pos"}, {"review": "b", "label": "neg"}])
    with pytest.raises(
        DataError,
        match=r"no line has the field 'text' \(fields: \['label', 'review'\]\); choose one with --text-column",
    ):
        prepare_user(path, tmp_path)


def test_a_label_folder_reads_its_files_as_a_table_reads_labels(tmp_path):
    # hidden files (macOS writes ._x.txt beside x.txt) were classes, X.TXT was skipped, a file name's spaces
    # and Unicode form made classes a table would have merged, and CR line ends made one text of a file
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, body in (
        (" pos .txt", "good\nfine\n"),
        ("._ pos .txt", "\x00\x05junk"),
        (".hidden.txt", "x\n"),
        ("NEG.TXT", "bad\r\nawful\r\n"),
        ("cafe\u0301.txt", "one\rtwo\rthree\r"),
        ("notes.md", "no\n"),
    ):
        (folder / name).write_bytes(body.encode())
    summary, texts = prepare_user(folder, tmp_path)
    bad = folder / os.fsdecode(b"\xffbad.txt")  # a file name that is not UTF-8 (Linux allows it)
    bad.write_text("x\n")
    (tmp_path / "again").mkdir()
    with pytest.raises(DataError, match=r"xffbad.txt: the file name is not UTF-8"):
        prepare_user(folder, tmp_path / "again")
    bad.unlink()
    assert summary["labels"] == ["NEG", "caf\u00e9", "pos"]
    assert texts == {"good", "fine", "bad", "awful", "one", "two", "three"}
    assert summary["row_issues"]["normalised"] == {"label_unicode_form": 3, "label_whitespace": 2}


def test_csv_with_two_columns_of_one_name_is_refused_not_read_from_the_first(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,label,label\n" + "".join(f"t{i},a,{'xy'[i % 2]}\n" for i in range(20)))
    with pytest.raises(
        DataError,
        match=r"dup.csv: 2 columns are named 'label' .* rename all but one, or choose another with --label-column",
    ):
        prepare_user(path, tmp_path)


def test_csv_empty_labels_are_dropped_and_counted_not_made_a_class(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text(
        "text,label\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)) + "no label,\nspaces,  \n"
    )
    summary, texts = prepare_user(path, tmp_path)
    assert summary["labels"] == ["neg", "pos"] and summary["row_issues"]["dropped"] == {"label_empty": 2}
    assert "no label" not in texts and summary["counts"]["rows_read"] == 22


def test_csv_and_tsv_read_a_one_megabyte_field(tmp_path):
    big = ('word, "quoted" and a\nnewline ' * 40_000)[: 1 << 20]  # 1 MiB: past the csv module's default 128 KiB limit
    rows = [(f"t{i}", "pos" if i % 2 else "neg") for i in range(20)] + [(big, "pos")]
    with open(tmp_path / "big.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    summary, texts = prepare_user(tmp_path / "big.csv", tmp_path)
    assert big.strip() in texts and summary["counts"]["unique_pairs"] == 21
    tsv_big = big.replace("\n", " ")
    (tmp_path / "big.tsv").write_text(
        "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows[:-1]) + f"{tsv_big}\tneg\n"
    )
    _, texts = prepare_user(tmp_path / "big.tsv", tmp_path)
    assert tsv_big.strip() in texts


def test_csv_field_over_the_limit_is_a_data_error_naming_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CSV_FIELD_LIMIT", 1000)  # the same check as at 64 MiB, without a 64 MiB file
    path = tmp_path / "open.csv"
    path.write_text('text,label\na,pos\nb,neg\n"an open quote that swallows the rest,pos\n' + "c,neg\n" * 300)
    with pytest.raises(
        DataError,
        match=r"open.csv, line 4: a field longer than 1,000 characters \(the limit\); usually a quote "
        r"opened on or after this line and never closed",
    ):
        read_table(path, "text", "label")


@pytest.mark.parametrize(
    "body, match",
    [
        (
            'text,label\na,pos\n"broken"quote,neg\nb,neg\n',
            r"bq.csv, line 3: malformed CSV \(.*\); a quote inside a quoted text must be doubled",
        ),
        (
            'text,label\na,pos\nb,neg\n"never closed,pos\nc,neg\n',
            r"bq.csv, line 4: a quote opened in this record is never closed",
        ),
        (
            "text,label\na,pos\nb\n",
            r"bq.csv, line 3: 1 field\(s\), expected at least 2; .*a text holding a comma must be in double quotes",
        ),
    ],
)
def test_csv_with_a_broken_quote_is_a_data_error_naming_the_line(tmp_path, body, match):
    path = tmp_path / "bq.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=match):
        prepare_user(path, tmp_path)


def test_line_numbers_count_lines_not_records_after_a_multiline_field(tmp_path):
    path = tmp_path / "ml.csv"
    path.write_text('text,label\n"one\ntwo\nthree",pos\nb,neg\n"bad"x,neg\n')
    with pytest.raises(DataError, match=r"ml.csv, line 6: malformed CSV"):
        read_table(path, "text", "label")


# --- the shared download cache: locked, swept only of dead writers' temporaries -------------------------------------


CHILD = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from seqship.pipeline.data import DataConfig, locate
Path(sys.argv[2]).touch()  # imported: ready
while not Path(sys.argv[3]).exists():  # start together
    time.sleep(0.005)
print(locate(DataConfig(dataset="waimai"), cache_dir=sys.argv[1]))
"""


def leave_a_dead_writers_partial(cache):
    """A cache temporary from a process that then died without cleaning up, as a killed download leaves it."""
    code = (
        "import sys; from seqship.runtime.fsio import temp_dir; p = temp_dir(sys.argv[1], 'waimai'); "
        "(p / 'waimai_10k.csv').write_text('half'); print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(cache)], cwd=REPO, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def test_concurrent_downloads_into_one_cache_share_one_verified_copy(data_dir, tmp_path):
    payload = published_source("waimai", data_dir)
    hits = []

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            time.sleep(1.5)  # long enough that the second process arrives while the first downloads
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    dead = leave_a_dead_writers_partial(cache)
    live = temp_dir(cache, "waimai")  # this process is alive: its download in progress must survive
    (live / "waimai_10k.csv").write_text("in progress")
    env = {k: v for k, v in os.environ.items() if k != "SEQSHIP_DATA_DIR"} | {
        "SEQSHIP_WAIMAI_URL": f"http://127.0.0.1:{server.server_address[1]}/waimai_10k.csv",
        "NO_PROXY": "*",
        "no_proxy": "*",
    }
    go = tmp_path / "go"
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(cache), str(tmp_path / f"ready{i}"), str(go)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        server.shutdown()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert Path(out.strip()) == cache / "waimai"
    logs = "".join(err for _, err in results)
    assert hits == ["/waimai_10k.csv"]  # one download: the other process waited for it and used its copy
    assert "another process is downloading waimai" in logs and "downloaded meanwhile by another process" in logs
    assert cached(cache / "waimai", REGISTRY["waimai"].download)
    assert not dead.exists() and f"removed {dead}" in logs  # a dead writer's leftovers are swept...
    assert (live / "waimai_10k.csv").read_text() == "in progress"  # ...a live one's are not


def test_a_download_sweeps_only_dead_writers_temporaries(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)
    source = tmp_path / "waimai_10k.csv"
    source.write_bytes(published_source("waimai", data_dir))
    monkeypatch.setenv("SEQSHIP_WAIMAI_URL", source.as_uri())
    cache = tmp_path / "cache"
    dead = leave_a_dead_writers_partial(cache)
    live = temp_dir(cache, "waimai")
    other = cache / ".waimai-abc123"  # the old hand-rolled temporary name: not ours to judge, left alone
    other.mkdir()
    assert dead.exists() and dead.name.endswith(".partial")
    folder = locate(DataConfig(dataset="waimai"), cache_dir=str(cache))
    assert cached(folder, REGISTRY["waimai"].download)
    assert not dead.exists() and live.is_dir() and other.is_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted([live.name, other.name, ".waimai.lock", "waimai"])
