"""Typed export and parity errors; the caller (a stage, the CLI) decides what to do with them."""

from __future__ import annotations

from seqship.runtime.errors import SeqshipError


class ExportError(SeqshipError):
    """An export could not be produced."""


class ContractError(ExportError):
    """An exported file breaks the model contract; `problems` lists every violation found."""

    def __init__(self, path, problems: list[str]):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path} breaks the model contract:\n{lines}")


class ParityError(SeqshipError):
    """An export computes something other than the PyTorch model; the report says where and by how much."""

    keep_outputs = True  # the failing report is the evidence: stages keep it on disk

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report
