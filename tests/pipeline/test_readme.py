"""The README and the reference it links: generated from the commands' --help, short, and every link alive.

docs/cli.md and the README's commands table are written by docs/generate_cli.py; when a command's help changes,
these tests name the command and say to run `python docs/generate_cli.py`.
"""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FIX = "run `python docs/generate_cli.py` and commit README.md and docs/cli.md"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_cli", REPO / "docs" / "generate_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


@pytest.fixture(scope="module")
def commands():
    return gen.commands()


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a fence's lines come back empty, to keep line numbers)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text(encoding="utf-8")):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = gen.anchor(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code, inline code spans removed first."""
    found = []
    for number, line in enumerate(_prose(path.read_text(encoding="utf-8")), 1):
        line = re.sub(r"`[^`]*`", "CODE", line)
        found += [(number, m.group(1)) for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line)]
    return found


def _sections(text: str) -> dict[str, str]:
    """docs/cli.md cut at its `## pipeline ...` headings: heading -> that command's whole section."""
    parts = re.split(r"(?m)^(?=## )", text)
    return {p.splitlines()[0][3:].strip(): p.rstrip("\n") + "\n" for p in parts if p.startswith("## ")}


def _table_rows(text: str) -> dict[str, str]:
    """The README's generated commands table: command -> its row."""
    body = text.split(gen.START, 1)[1].split(gen.END, 1)[0]
    rows = {}
    for line in body.strip().splitlines()[2:]:
        m = re.match(r"\| \[`([^`]+)`\]", line)
        if m:
            rows[m.group(1)] = line
    return rows


def test_docs_cli_md_is_the_help_of_every_command_as_it_is_now(commands):
    current = _sections((REPO / "docs" / "cli.md").read_text(encoding="utf-8"))
    stale = [gen.title(p) for p, _ in commands if current.get(gen.title(p)) != gen.section(p)]
    assert not stale, f"docs/cli.md differs from the --help of {', '.join(f'`{s}`' for s in stale)}: {FIX}"
    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == gen.render_reference(), (
        f"docs/cli.md's heading or contents list is not what the generator writes: {FIX}"
    )


def test_the_readme_commands_table_is_the_first_line_of_each_commands_help(commands):
    text = README.read_text(encoding="utf-8")
    assert gen.START in text and gen.END in text, f"README.md lacks the markers {gen.START} / {gen.END}"
    rows = _table_rows(text)
    wanted = _table_rows(f"{gen.START}\n{gen.render_table()}\n{gen.END}")
    stale = [name for name, row in wanted.items() if rows.get(name) != row]
    assert not stale, f"the README's commands table is out of date for {', '.join(f'`{s}`' for s in stale)}: {FIX}"
    assert gen.readme_with_table(text, gen.render_table()) == text, f"the README's commands table has extra rows: {FIX}"


def test_every_command_and_subcommand_is_in_the_reference_and_the_readme(commands):
    names = {gen.title(p) for p, _ in commands}
    # the walk must reach the commands users run, including the ones an older help test missed
    for expected in (
        "pipeline serve",
        "pipeline results",
        "pipeline run cv",
        "pipeline run baseline",
        "pipeline run report",
    ):
        assert expected in names
    headings = set(_sections((REPO / "docs" / "cli.md").read_text(encoding="utf-8")))
    assert names <= headings, f"docs/cli.md lacks {sorted(names - headings)}: {FIX}"
    rows = set(_table_rows(README.read_text(encoding="utf-8")))
    assert names - {"pipeline"} <= rows, (
        f"the README's commands table lacks {sorted(names - {'pipeline'} - rows)}: {FIX}"
    )


def test_the_readme_is_short_and_its_contents_list_reaches_every_section():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 400, "README.md is 400 lines or more: move reference or measurements to docs/"
    lines = _prose(text)
    start = lines.index("## Contents")
    toc = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        toc += re.findall(r"\]\(#([^)]+)\)", line)
    assert toc, "the README's `## Contents` lists no sections"
    anchors = _anchors(README)
    assert not [a for a in toc if a not in anchors], (
        f"contents entries with no heading: {[a for a in toc if a not in anchors]}"
    )
    sections = [gen.anchor(line[3:]) for line in lines if line.startswith("## ") and line != "## Contents"]
    assert not [s for s in sections if s not in toc], (
        f"sections missing from the contents: {[s for s in sections if s not in toc]}"
    )
    # the first screen: what it is, then the two commands
    assert lines.index("## Contents") < 60 and text.count("```bash", 0, text.index("## Contents")) == 2


DOCS = [README, *sorted((REPO / "docs").glob("*.md"))] + [
    REPO / "pipeline" / "bench" / "README.md",
    REPO / "pipeline" / "experiments" / "README.md",
    REPO / "artifacts" / "README.md",
]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(doc):
    broken = []
    for number, target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"line {number}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"line {number}: {target} (no heading #{fragment} in {dest.relative_to(REPO)})")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_test_named_as_a_guarantee_exists(doc):
    missing = []
    for m in re.finditer(r"(tests/[\w/]+\.py)(?:::(\w+))?", doc.read_text(encoding="utf-8")):
        path, name = REPO / m.group(1), m.group(2)
        if not path.is_file():
            missing.append(m.group(1))
        elif name and not re.search(rf"^\s*(?:async )?def {name}\(", path.read_text(encoding="utf-8"), re.M):
            missing.append(m.group(0))
    assert not missing, f"{doc.relative_to(REPO)} names tests that do not exist: {sorted(set(missing))}"


def _commands_of(script: str) -> list[str]:
    """The command lines of a shell script, `.venv/bin/` dropped where the script activates .venv."""
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if ". .venv/bin/activate" in lines or "source .venv/bin/activate" in lines:
        lines = [line.replace(".venv/bin/", "") for line in lines]
    return lines


def test_the_readmes_two_commands_are_what_ci_runs():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", text[: text.index("## Contents")], re.S)
    assert len(blocks) == 2 and all("\n" not in b for b in blocks), "the README opens with two one-line commands"
    install, test = ([part.strip() for part in b.split("&&")] for b in blocks)
    assert install[0] == "./install.sh" and install[1].endswith("pipeline run all --data-dir ../shared/data")
    assert test == ["bash tests/setup.sh", ".venv/bin/python -m pytest"]
    ci = _commands_of((REPO / ".ci" / "run").read_text(encoding="utf-8"))
    # CI runs the first command's install but not its `pipeline run all` (the tests train what they need)
    wanted = [install[0], *(part.replace(".venv/bin/", "") for part in test)]
    where = [ci.index(c) if c in ci else -1 for c in wanted]
    assert -1 not in where, (
        f".ci/run does not run {[c for c, i in zip(wanted, where) if i < 0]}: it must run the README's commands"
    )
    assert where == sorted(where), f".ci/run must run {wanted} in this order"
