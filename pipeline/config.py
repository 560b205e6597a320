"""How a run's configuration is resolved from what the user gave: library code, so that the CLI, the
results command and any script resolve it the same way (defaults, then the dataset's, then the user's)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

ARTIFACTS_ENV = "SEQSHIP_ARTIFACTS_DIR"


def default_artifacts_dir() -> Path:
    """SEQSHIP_ARTIFACTS_DIR, else the source checkout's artifacts/ folder, else ./artifacts."""
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parent.parent / "artifacts"
    if (checkout / "README.md").is_file():
        return checkout
    return Path("artifacts").resolve()


def run_name(run_name: str | None, data_path: str | os.PathLike | None, dataset: str | None) -> str:
    """The run folder's name: the one given, else the --data file's stem (of its absolute path: `--data .` is the
    current folder's name), else the dataset's name."""
    if run_name:
        return run_name
    if not data_path:
        return dataset or "names"
    stem = Path(os.path.abspath(data_path)).stem
    if not stem or stem.startswith("."):
        from seqship.pipeline.runs import StageError

        raise StageError(
            f"--data {os.fspath(data_path)!r} gives no run folder name ({stem!r}); name the run with --run-name"
        )
    return stem


def open_run(artifacts_dir: str | os.PathLike | None, name: str | None, data_path=None, dataset: str | None = None):
    """The Run for these options (its folder is not created until a stage writes); a run folder that is, holds
    or lies inside the --data it would read is refused."""
    from seqship.pipeline.runs import Run, refuse_overlap

    run = Run(artifacts_dir or default_artifacts_dir(), run_name(name, data_path, dataset))
    if data_path:
        refuse_overlap(run.root, data_path)
    return run


def data_config(
    dataset: str | None,
    data_path: str | os.PathLike | None,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
):
    """The DataConfig for a registry dataset, or for the user's own --data file or folder."""
    from seqship.pipeline.data import DataConfig, DataError

    data = str(Path(data_path).resolve()) if data_path else None
    if data is not None:
        try:  # the path is recorded (stage inputs, reports) as UTF-8 text
            data.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(data).decode("utf-8", "backslashreplace")
            raise DataError(
                f"--data {shown}: the path is not UTF-8 (as this system's locale decodes it); "
                "rename it, or run under a UTF-8 locale"
            ) from None
    return DataConfig(
        dataset=None if data_path else dataset,
        data=data,
        text_column=text_column,
        label_column=label_column,
        seed=seed,
    )


def train_config(overrides: dict, dataset: str | None = None, run=None):
    """TrainConfig defaults, then the dataset's defaults, then the non-None `overrides`.

    With `run` (as `pipeline run train` alone has no --dataset), the dataset is the one the run's data
    stage was made from. Invalid values raise TrainError naming the option.
    """
    from seqship.pipeline.data import REGISTRY
    from seqship.pipeline.train import TrainConfig

    if run is not None:
        record = run.record("data")
        if record:
            dataset = (record.get("inputs", {}).get("config") or {}).get("dataset") or None
    values = dict(REGISTRY[dataset].train_defaults) if dataset in REGISTRY else {}
    values |= {f.name: overrides[f.name] for f in fields(TrainConfig) if overrides.get(f.name) is not None}
    return TrainConfig(**values)
