"""The model card (the bundle's README.md) and the bundle manifest with labels a user chose.

Labels, the run name and dataset fields come from user data; a Markdown or HTML renderer (GitHub, a model hub)
must show them literally: no tag, no link, no table split by a `|`, no line broken by a newline.
"""

import html
import json
import re

import pytest

from seqship.pipeline.package import md, model_card

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "<javascript:alert(1)>",
    "a | b",
    "two\nlines\r\n",
    "`code` ``x``",
    "**bold** _it_ ~~no~~",
    "- list",
    "1. item",
    "# heading",
    "&lt;entity&gt; &amp;",
    "back\\slash|\\`",
    "\u202eevil",
    "![img](x.png)",
    "[ref]: javascript:x",
]
NAME = "run <b>x</b> | [x](javascript:alert(1))\n# h"
SOURCE = "<img src=x onerror=alert(1)> `x` | y"
NOTE = "- a warning that looks like a nested list\n1. and a numbered one"


def shown(markdown: str) -> str:
    """What a renderer shows for text that md() produced: backslash escapes and entities undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown))


def unescaped(line: str, ch: str) -> int:
    """How many `ch` in a Markdown line are live syntax (not preceded by an odd run of backslashes)."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*" + re.escape(ch), line))


def manifest_with(tiny_run, labels, name, source, note, reason) -> dict:
    """The tiny run's real manifest with the user-controlled strings replaced."""
    artifacts, _ = tiny_run
    m = json.loads((artifacts / "tiny" / "bundle" / "manifest.json").read_text())
    stats = list(m["metrics"]["per_class"].values())
    m["labels"] = labels
    m["metrics"]["per_class"] = {lab: stats[i % len(stats)] for i, lab in enumerate(labels)}
    m["name"], m["data"]["source"] = name, source
    m["notes"] = m["notes"] + [note]
    m["parity"]["engines_skipped"] = [{"engine": "engine", "reason": reason}]
    return m


def tables(card: str) -> list[list[str]]:
    """The card's tables, each a list of its lines."""
    blocks, current = [], []
    for line in card.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks


def test_hostile_labels_run_name_and_source_render_literally_in_the_model_card(tiny_run):
    card = model_card(manifest_with(tiny_run, HOSTILE, NAME, SOURCE, NOTE, "missing | <b>[x](javascript:y)</b>"))
    plain = model_card(
        manifest_with(tiny_run, [f"label{i}" for i in range(len(HOSTILE))], "tiny", "names", "a note", "missing")
    )
    assert "<" not in card  # no HTML at all: every `<` a label brought is an entity
    assert not re.search(r"(?<!\\)(?:\\\\)*\][(:]", card)  # no inline or reference link (nor `<...>` autolink: no `<`)
    assert len(card.splitlines()) == len(plain.splitlines())  # no newline got in
    assert f"- {md(NOTE, line_start=True)}" in card.splitlines() and md(NOTE, line_start=True).startswith(
        "\\- "
    )  # not a nested list
    for block in tables(card):  # every row of every table has as many cell borders as its header
        assert {unescaped(row, "|") for row in block} == {unescaped(block[0], "|")}, block
    per_class = next(b for b in tables(card) if b[0].startswith("| label |"))[2:]
    assert len(per_class) == len(HOSTILE)
    for row, label in zip(per_class, HOSTILE):
        cell = row.split(" | ")[0][2:]
        assert shown(cell) == label.replace("\n", "\\n").replace("\r", "\\r").replace("\u202e", "\\u202e")
        assert unescaped(cell, "`") == unescaped(cell, "*") == unescaped(cell, "[") == unescaped(cell, "_") == 0
    title = card.splitlines()[0]
    assert title.startswith("# ") and shown(title[2:]) == NAME.replace("\n", "\\n") + ": seqship bundle"
    assert shown(md(SOURCE)) == SOURCE and md(SOURCE) in card


def test_the_card_names_report_html_in_the_run_folder_without_a_dead_link(tiny_run):
    artifacts, summary = tiny_run
    card = (artifacts / "tiny" / "bundle" / "README.md").read_text()
    assert "`report.html` in the run folder" in card and "../report.html" not in card and "](" not in card
    assert not (artifacts / "tiny" / "bundle" / "report.html").exists()  # it is not in the bundle, so no link to it


def test_the_manifest_carries_the_compact_confusions_never_the_matrix(tiny_run):
    artifacts, _ = tiny_run
    manifest = json.loads((artifacts / "tiny" / "bundle" / "manifest.json").read_text())
    metrics = json.loads((artifacts / "tiny" / "train" / "metrics.json").read_text())
    assert "confusion_matrix" not in manifest["metrics"]
    assert manifest["metrics"]["confusion"] == metrics["test"]["confusion"]
    assert manifest["metrics"]["confusion"]["top_pairs_max"] >= len(manifest["metrics"]["confusion"]["top_pairs"]) > 0
    assert len(metrics["test"]["confusion_matrix"]) == len(
        manifest["labels"]
    )  # few labels: the run keeps the whole matrix


def test_the_card_says_how_to_install_the_predictor_before_it_imports_it(tiny_run):
    """ "Load it": the runtime-only install (seqship is not on PyPI: its wheel, or `pip install .` in a checkout),
    then the import; the wheel's name carries the version that made the bundle."""
    from seqship.pipeline import __version__

    artifacts, _ = tiny_run
    card = (artifacts / "tiny" / "bundle" / "README.md").read_text(encoding="utf-8")
    load = card.split("## Load it", 1)[1].split("\n## ", 1)[0]
    wheel_cmd = f"pip install seqship-{__version__}-py3-none-any.whl"
    assert f"```bash\n{wheel_cmd}\n```" in load
    assert "`pip install .`" in load and "not on PyPI" in load
    assert load.index(wheel_cmd) < load.index("`pip install .`") < load.index("from seqship.runtime import Predictor")
    assert "torch" not in load.split("from seqship.runtime import Predictor")[0].replace("without PyTorch", "")


def test_a_manifest_version_that_is_not_a_plain_version_never_reaches_the_pip_command(tiny_run):
    from seqship.pipeline import __version__

    m = manifest_with(tiny_run, ["a", "b"], "n", "s", "note", "r")
    for hostile in ("1.0; rm -rf ~", "1.0\n```\n# h", "", None):
        m["versions"]["seqship"] = hostile
        assert f"pip install seqship-{__version__}-py3-none-any.whl\n" in model_card(m)
    m["versions"]["seqship"] = "0.2.0rc1+cpu"
    assert "pip install seqship-0.2.0rc1+cpu-py3-none-any.whl\n" in model_card(m)


@pytest.mark.slow
def test_the_wheel_the_card_names_is_the_wheel_seqship_builds(tiny_run, wheel):
    artifacts, _ = tiny_run
    card = (artifacts / "tiny" / "bundle" / "README.md").read_text(encoding="utf-8")
    assert f"pip install {wheel.name}\n" in card
