"""The data stage on the real names data and on users' own files."""
import hashlib
import io
import json
import zipfile

import pytest

from pipeline.data import DataConfig, DataError, _download, REGISTRY, clean, locate, prepare, read_split


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
    cases = [("d.csv", "review", "label"), ("d.tsv", "sentence", "label"), ("d.jsonl", "t", "y"), ("folder", "text", "label")]
    for name, text_col, label_col in cases:
        out = tmp_path / f"out-{name}"
        out.mkdir()
        cfg = DataConfig(dataset=None, data=str(tmp_path / name), text_column=text_col, label_column=label_col)
        summary = prepare(cfg, locate(cfg), out)
        assert summary["labels"] == ["neg", "pos"], name
        assert summary["counts"]["unique_pairs"] >= 40, name
    assert any("inside" in t for t, _ in read_split(tmp_path / "out-folder", "train") + read_split(tmp_path / "out-folder", "test") + read_split(tmp_path / "out-folder", "val"))


def test_user_data_errors_name_the_problem(tmp_path):
    def run(name, content, **kw):
        path = tmp_path / name
        path.write_bytes(content)
        cfg = DataConfig(dataset=None, data=str(path), **kw)
        (tmp_path / "o").mkdir(exist_ok=True)
        return prepare(cfg, locate(cfg), tmp_path / "o")

    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['review', 'label'\]\); choose one with --text-column"):
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
    with pytest.raises(DataError, match=r"download from .* failed .*Offline\? Pass --data-dir DIR or set SEQSHIP_DATA_DIR"):
        locate(DataConfig(), cache_dir=str(tmp_path / "cache"))


def make_zip(data_dir, tamper=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in REGISTRY["names"].sha256:
            data = (data_dir / "names" / name).read_bytes()
            z.writestr("data/names/" + name, data + (b"x" if name == tamper else b""))
    return buf.getvalue()


def test_download_verifies_checksums_and_caches(data_dir, tmp_path, monkeypatch):
    # The real download code path, fed the tutorial archive's layout through a file:// URL (no network here).
    good = tmp_path / "data.zip"
    good.write_bytes(make_zip(data_dir))
    monkeypatch.setenv("SEQSHIP_NAMES_URL", good.as_uri())
    folder = _download(REGISTRY["names"], tmp_path / "cache")
    assert hashlib.sha256((folder / "Arabic.txt").read_bytes()).hexdigest() == REGISTRY["names"].sha256["Arabic.txt"]
    good.unlink()  # a second call is served from the verified cache
    assert _download(REGISTRY["names"], tmp_path / "cache") == folder
    bad = tmp_path / "bad.zip"
    bad.write_bytes(make_zip(data_dir, tamper="Greek.txt"))
    monkeypatch.setenv("SEQSHIP_NAMES_URL", bad.as_uri())
    with pytest.raises(DataError, match="Greek.txt has sha256 .* refusing it"):
        _download(REGISTRY["names"], tmp_path / "cache2")
    assert not (tmp_path / "cache2" / "names").exists()


@pytest.mark.parametrize("name, labels, test_size", [
    ("waimai", 2, None), ("chnsenticorp", 2, None), ("shopping-cats", 10, None), ("sst2", 2, 872), ("mr", 2, None),
])
def test_registry_datasets_read_their_published_files(data_dir, tmp_path, name, labels, test_size):
    cfg = DataConfig(dataset=name)
    summary = prepare(cfg, locate(cfg, str(data_dir)), tmp_path)
    assert len(summary["labels"]) == labels
    parts = {s: read_split(tmp_path, s) for s in ("train", "val", "test")}
    train_texts = {t for t, _ in parts["train"]}
    assert not train_texts & {t for t, _ in parts["test"]} and not train_texts & {t for t, _ in parts["val"]}
    if test_size:  # a published test split is used as it is, never re-split
        assert summary["splits"]["test"] == test_size
    assert not any(t.startswith("\ufeff") for rows in parts.values() for t, _ in rows)


def test_registry_dataset_without_a_local_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQSHIP_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"'waimai': no local copy.*--data-dir DIR or set SEQSHIP_DATA_DIR=DIR, where DIR holds chinese/"):
        locate(DataConfig(dataset="waimai"), cache_dir=str(tmp_path))
