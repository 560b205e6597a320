"""The benchmarks' one argument style: argparse, a usage docstring as the help, and the same flag for the
same thing in every module (`--bundle DIR`, `--texts FILE`, `--data-dir DIR`, `--json`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DATA_DIR_ENV = "SEQSHIP_DATA_DIR"


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose help is the module's docstring, usage lines and all; its usage names the command as it is
    run (`python -m seqship.pipeline.bench.serve`, not `serve.py`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None and spec.name.startswith("seqship.") else None
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_bundle(ap: argparse.ArgumentParser) -> None:
    """--bundle DIR: the bundle folder to measure."""
    ap.add_argument("--bundle", type=Path, required=True, help="Bundle folder.")


def add_texts(ap: argparse.ArgumentParser, what: str) -> None:
    """--texts FILE: real texts, one per line."""
    ap.add_argument("--texts", type=Path, default=None, help=f"Real texts, one per line (UTF-8) [default: {what}].")


def add_data_dir(ap: argparse.ArgumentParser) -> None:
    """--data-dir DIR: the registry datasets' folder."""
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get(DATA_DIR_ENV) or None,
        help=f"Folder holding the registry datasets (e.g. names/) [env {DATA_DIR_ENV}].",
    )


def add_json(ap: argparse.ArgumentParser) -> None:
    """--json: the figures as JSON on stdout instead of the table."""
    ap.add_argument("--json", action="store_true", help="Print the figures as JSON instead of the table.")
