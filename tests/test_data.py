"""The data stage on the real names data and on users' own files."""
import dataclasses
import hashlib
import io
import json
import tarfile
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


def published_source(name, data_dir, tamper=None):
    """The dataset's public source rebuilt, in its published layout and encoding, from the local copy."""
    ds = REGISTRY[name]
    dl, local = ds.download, data_dir / ds.folder
    if name == "sst2":  # GLUE's train.tsv = the local train.tsv + dev.tsv; GLUE's dev.tsv = the local test.tsv
        dev = (local / "dev.tsv").read_bytes().split(b"\n", 1)[1]
        stored = {"train.tsv": (local / "train.tsv").read_bytes().rstrip(b"\n") + b"\n" + dev,
                  "test.tsv": (local / "test.tsv").read_bytes()}
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
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(
            ds, download=dataclasses.replace(ds.download, archive_md5=hashlib.md5(source.read_bytes()).hexdigest())))
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
        _download(ds, tmp_path / "cache")
    assert not (tmp_path / "cache" / name).exists() and not list((tmp_path / "cache").iterdir())
    (tmp_path / "junk").write_bytes(b"<html>not an archive</html>")
    monkeypatch.setenv(ds.download.env_var(name), (tmp_path / "junk").as_uri())
    with pytest.raises(DataError, match="not a readable|sha256"):
        _download(ds, tmp_path / "cache")


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
    monkeypatch.setenv("SEQSHIP_WAIMAI_URL", "http://127.0.0.1:9/waimai_10k.csv")  # nothing listens there
    with pytest.raises(DataError, match=r"'waimai': no local copy and the download from .* failed .*Offline\? "
                                        r"Pass --data-dir DIR or set SEQSHIP_DATA_DIR=DIR, where DIR holds chinese/"):
        locate(DataConfig(dataset="waimai"), cache_dir=str(tmp_path))
