"""The `pipeline` command: a thin layer that parses options, calls the stage functions and prints.

Heavy imports (torch, onnx) happen inside the commands that need them, so `pipeline --help` and
`pipeline predict` start fast and work with the base install.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from seqship.pipeline import __version__
from seqship.pipeline.config import ARTIFACTS_ENV, default_artifacts_dir
from seqship.runtime.errors import SeqshipError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
SEED = click.IntRange(0, 2**32 - 1)  # what numpy's and torch's generators accept
# Modules of the optional extras, and the extra that brings each.
EXTRAS = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "matplotlib": "report",
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "ray": "ray",
    "pyarrow": "ray",
    "sklearn": "baseline",
}
TORCH_EXTRA = "train"  # the one extra that brings torch
log = logging.getLogger("seqship.pipeline.cli")


def setup_logging(verbosity: int) -> None:
    """Log records of seqship's packages to stderr: warnings with -q, info by default, debug with -vv."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0 else "%(message)s"))
    for name in ("seqship",):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def fail(error: Exception, as_json: bool, **extra) -> click.ClickException:
    """A domain error becomes `Error: ...` and exit 1; with --json, an error object on stdout too."""
    if as_json:
        click.echo(
            json.dumps(
                {"ok": False, "error": str(error), "error_type": type(error).__name__, **extra},
                ensure_ascii=False,
                default=str,
            )
        )
    from seqship.pipeline.distributed import record_error

    record_error(error)  # under torchrun, its failure report shows this line too
    return click.ClickException(str(error))


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """For a missing optional dependency: which extra to install, as one line; else None."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra = EXTRAS[top]
    # torch is pinned and installed first only where the extra brings it (see install.sh): a command that
    # needs another extra must not send a runtime-only install off to fetch torch
    # (the CPU build: an unpinned or default-index torch is a multi-GB CUDA build)
    torch_first = (
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && " if extra == TORCH_EXTRA else ""
    )
    return (
        f"this command needs {top}, from seqship's `{extra}` extra, which is not installed here: "
        f"from a checkout, `{torch_first}pip install -e '.[{extra}]'` (or `bash install.sh`); "
        f"from a wheel, `pip install 'seqship-0.1.0-py3-none-any.whl[{extra}]'`"
    )


def errors_handled(command):
    """Every failure of a command becomes one `Error: ...` line and exit 1 (with --json, an error
    object on stdout too): seqship's own errors, OS errors (full disk, read-only folder, permissions),
    a missing optional extra, and -- as a last resort -- an unexpected bug, whose traceback -vv shows."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        as_json = bool(kwargs.get("as_json"))
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            reader_gone()
        except SeqshipError as e:
            from seqship.exporters.errors import ParityError  # no torch needed

            raise fail(e, as_json, **({"parity": e.report} if isinstance(e, ParityError) else {})) from None
        except ModuleNotFoundError as e:
            hint = missing_extra(e)
            if hint is None:
                raise _internal(e, as_json) from None
            raise fail(SeqshipError(hint), as_json) from None
        except MemoryError:
            raise fail(
                SeqshipError("out of memory: score or train in smaller parts (see the guarantees in the README)"),
                as_json,
            ) from None
        except OSError as e:
            from seqship.runtime.fsio import describe_os_error

            raise fail(SeqshipError(describe_os_error(e.filename, e, "use")), as_json) from None
        except Exception as e:  # noqa: BLE001 - a bug: one line, and the traceback with -vv
            from seqship.pipeline.distributed import describe_failure

            lost = describe_failure(e)
            if lost is not None:
                raise fail(lost, as_json) from None
            raise _internal(e, as_json) from None

    return wrapper


def _internal(e: BaseException, as_json: bool) -> click.ClickException:
    log.debug("unexpected error", exc_info=e)
    return fail(
        SeqshipError(
            f"unexpected {type(e).__name__}: {str(e)[:300]} (a bug in seqship: please report it "
            "with the output of the same command run with -vv)"
        ),
        as_json,
    )


class Commands(click.Group):
    """A command group that points at `pipeline run X` when `pipeline X` is a stage."""

    def resolve_command(self, ctx, args):
        """As click's, with a hint for a stage name given without `run`."""
        name = args[0] if args else None
        if name and self.get_command(ctx, name) is None and name in getattr(self.commands.get("run"), "commands", {}):
            raise click.UsageError(f"no command {name!r}: the stages are under `run`; try `pipeline run {name}`", ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=Commands, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="seqship")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """seqship: train an embedding + GRU text classifier, export it to TorchScript and ONNX,
    prove the exports match PyTorch, and ship a bundle that a torch-free predictor runs.

    \b
    Examples:
      pipeline run all --data-dir ../shared/data          # names dataset -> artifacts/names/bundle/
      pipeline predict --bundle artifacts/names/bundle Nguyen Schmidt
      pipeline run verify --run-name names --atol 1e-6    # re-check parity of an existing run
    """
    setup_logging(-1 if quiet else verbose)


# --- shared options -----------------------------------------------------------------------------------


def common_options(f):
    """Options every `pipeline run` command takes."""
    f = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")(f)
    f = click.option("--force", is_flag=True, help="Redo the stage(s) even when their inputs are unchanged.")(f)
    f = click.option("--run-name", default=None, help="Folder under the artifacts dir [default: the dataset name].")(f)
    f = click.option(
        "--artifacts-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar=ARTIFACTS_ENV,
        help=f"Where runs are written [env {ARTIFACTS_ENV}; default: a checkout's artifacts/, else ./artifacts].",
    )(f)
    return f


PIN_ENV = "SEQSHIP_EXPECT_SHA256"


def pin_option(many: bool = False):
    """--expect-sha256 [env SEQSHIP_EXPECT_SHA256], the same in every command that loads a bundle."""
    if many:
        help_ = (
            "Refuse to start unless each bundle's digest (sha256 of manifest.json, as `pipeline inspect` prints) "
            f"is this: one per --bundle, in the same order [env {PIN_ENV}: the digests separated by spaces, "
            "one per --bundle in order]."
        )
    else:
        help_ = (
            "Refuse the bundle unless its digest (sha256 of manifest.json, as `pipeline inspect` prints) is "
            f"this [env {PIN_ENV}]."
        )
    return click.option("--expect-sha256", "expect_sha256", multiple=many, envvar=PIN_ENV, help=help_)


def trusted_digests(given, bundles: int = 1) -> list[str | None]:
    """The digest to pin each of `bundles` bundles to, from --expect-sha256 or SEQSHIP_EXPECT_SHA256 (the
    option wins; the variable holds the same thing: one digest per bundle, in order, separated by spaces).
    Checked before any bundle file is read; no pin at all: [None] * bundles."""
    from seqship.runtime.bundle import check_pin

    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("expect_sha256") if ctx is not None else None
    where = PIN_ENV if source is click.core.ParameterSource.ENVIRONMENT else "--expect-sha256"
    values = [given] if isinstance(given, str) else list(given or ())
    values = [part for v in values for part in (v.split() if where == PIN_ENV else [v])]
    if not values:
        if os.environ.get(PIN_ENV) is not None and not os.environ[PIN_ENV].strip():
            # click reads an empty variable as unset: refuse it rather than silently not pinning
            raise click.UsageError(f"{PIN_ENV} is set but empty: unset it, or set it to the bundle digest you trust")
        return [None] * bundles
    if len(values) != bundles:
        raise click.UsageError(
            f"{where} gives {len(values)} digest(s) for {bundles} bundle(s): give one per --bundle, in the same order"
        )
    return [check_pin(v) for v in values]  # a malformed pin: BundleError naming it


def data_options(f):
    """Options that choose and read the data."""
    f = click.option(
        "--seed", type=SEED, default=0, show_default=True, help="Seed for the split, training and probes."
    )(f)
    f = click.option(
        "--label-column", default="label", show_default=True, help="Label column of a CSV/TSV/JSONL --data file."
    )(f)
    f = click.option(
        "--text-column", default="text", show_default=True, help="Text column of a CSV/TSV/JSONL --data file."
    )(f)
    f = click.option(
        "--data",
        "data_path",
        type=click.Path(exists=True, path_type=Path),
        default=None,
        help="Your own data: a folder of <label>.txt files, or a .csv/.tsv/.jsonl file.",
    )(f)
    f = click.option(
        "--data-dir",
        envvar="SEQSHIP_DATA_DIR",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder holding the registry datasets (e.g. names/) [env SEQSHIP_DATA_DIR]; else they are downloaded.",
    )(f)
    f = click.option(
        "--dataset", default="names", show_default=True, help="Registry dataset (see `pipeline datasets`)."
    )(f)
    return f


def train_options(f):
    """Training, tokenizer and model options (None: the dataset's default, else TrainConfig's)."""
    dflt = "dataset's, else "  # options whose default depends on the dataset (see `pipeline datasets`)
    opts = [
        click.option(
            "--epochs",
            type=click.IntRange(1),
            default=None,
            help=f"Most epochs (early stopping may end sooner) [default: {dflt}30].",
        ),
        click.option("--batch-size", type=click.IntRange(1), default=None, help=f"[default: {dflt}64]"),
        click.option(
            "--lr",
            type=click.FloatRange(0, 10, min_open=True),
            default=None,
            help=f"AdamW learning rate [default: {dflt}3e-3].",
        ),
        click.option(
            "--patience",
            type=click.IntRange(1),
            default=None,
            help=f"Epochs without better val macro-F1 before stopping [default: {dflt}5].",
        ),
        click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default=None, help="[default: cpu]"),
        click.option(
            "--cell",
            type=click.Choice(["gru", "lstm", "rnn"]),
            default=None,
            help="Recurrent cell (rnn = tanh RNN) [default: gru].",
        ),
        click.option("--embed-dim", type=click.IntRange(1), default=None, help=f"[default: {dflt}64]"),
        click.option("--hidden-dim", type=click.IntRange(1), default=None, help=f"[default: {dflt}128]"),
        click.option("--layers", "num_layers", type=click.IntRange(1), default=None, help="[default: 1]"),
        click.option("--bidirectional/--unidirectional", default=None, help="[default: bidirectional]"),
        click.option(
            "--dropout",
            type=click.FloatRange(0, 1, max_open=True),
            default=None,
            help=f"Between layers and before the head [default: {dflt}0.1].",
        ),
        click.option(
            "--embed-dropout",
            type=click.FloatRange(0, 1, max_open=True),
            default=None,
            help=f"On token embeddings [default: {dflt}0].",
        ),
        click.option(
            "--pooling",
            type=click.Choice(["last", "max", "last+max"]),
            default=None,
            help=f"Head input: last state per direction, max over positions, or both [default: {dflt}last].",
        ),
        click.option(
            "--weight-decay", type=click.FloatRange(0), default=None, help=f"AdamW weight decay [default: {dflt}1e-4]."
        ),
        click.option(
            "--class-weight",
            type=click.Choice(["none", "balanced", "sqrt"]),
            default=None,
            help=f"Loss weight per class from training counts: balanced = 1/n_c, sqrt = 1/sqrt(n_c); for skewed classes [default: {dflt}none].",
        ),
        click.option(
            "--lr-schedule",
            type=click.Choice(["plateau", "cosine"]),
            default=None,
            help=f"plateau = halve the rate when val macro-F1 stalls; cosine = 1-epoch warm-up, then cosine decay to 0 at --epochs [default: {dflt}plateau].",
        ),
        click.option(
            "--pair-buckets",
            type=click.IntRange(0, 2**20),
            default=None,
            help=f"> 0: add a hashed embedding of each (token, next token) pair from this many buckets, computed in the model [default: {dflt}0].",
        ),
        click.option(
            "--wide/--no-wide",
            default=None,
            help=f"Add a linear part on the TF-IDF of hashed token n-grams, computed in the model and fitted first as the baseline is; training starts from it [default: {dflt}no-wide].",
        ),
        click.option(
            "--wide-ngrams",
            type=click.IntRange(0, 8),
            default=None,
            help=f"The wide part's n-grams: 1 to this many tokens; 0 = the baseline's range [default: {dflt}0].",
        ),
        click.option(
            "--wide-buckets",
            type=click.IntRange(2, 2**20),
            default=None,
            help=f"Hashed n-gram buckets of the wide part, a power of two [default: {dflt}262144].",
        ),
        click.option(
            "--wide-tune/--wide-frozen",
            default=None,
            help=f"Keep training the fitted wide weights with the rest, or freeze them [default: {dflt}wide-frozen].",
        ),
        click.option("--tokenizer", type=click.Choice(["char", "word"]), default=None, help=f"[default: {dflt}char]"),
        click.option("--lowercase/--keep-case", default=None, help=f"[default: {dflt}keep case]"),
        click.option(
            "--max-length",
            type=click.IntRange(1),
            default=None,
            help=f"Tokens kept per text [default: {dflt}the 99.9th percentile of training lengths].",
        ),
        click.option(
            "--min-freq",
            type=click.IntRange(1),
            default=None,
            help=f"Rarer training tokens map to unk [default: {dflt}1].",
        ),
        click.option(
            "--max-vocab",
            type=click.IntRange(3),
            default=None,
            help="Keep only the most frequent tokens, pad and unk included [default: no limit].",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def verify_options(f):
    """The parity gate's tolerances."""
    f = click.option(
        "--rtol",
        type=click.FloatRange(0),
        default=1e-5,
        show_default=True,
        help="Relative tolerance of the parity gate.",
    )(f)
    f = click.option(
        "--atol",
        type=click.FloatRange(0),
        default=1e-5,
        show_default=True,
        help="Absolute tolerance of the parity gate.",
    )(f)
    return f


def _check_data_choice(opts: dict) -> None:
    """Usage errors for data options that would be ignored: --dataset beside --data, columns without a table."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or "data_path" not in opts:
        return

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE

    data = opts["data_path"]
    if data is not None and given("dataset"):
        raise click.UsageError("--data and --dataset both choose the data: give one of them")
    columns = [f"--{n.replace('_', '-')}" for n in ("text_column", "label_column") if given(n)]
    if columns and (data is None or data.is_dir()):
        where = (
            "a folder of <label>.txt files (its labels are the file names)"
            if data is not None
            else "a registry dataset"
        )
        verb = "name columns" if len(columns) > 1 else "names a column"
        raise click.UsageError(f"{' and '.join(columns)} {verb} of a CSV/TSV/JSONL --data file, not of {where}")


def _run(opts: dict):
    from seqship.pipeline.config import open_run

    _check_data_choice(opts)
    return open_run(opts.get("artifacts_dir"), opts.get("run_name"), opts.get("data_path"), opts.get("dataset"))


def _data_cfg(opts: dict):
    from seqship.pipeline.config import data_config

    return data_config(opts["dataset"], opts["data_path"], opts["text_column"], opts["label_column"], opts["seed"])


def _train_cfg(opts: dict, run=None):
    from seqship.pipeline.config import train_config

    return train_config(opts, None if opts.get("data_path") else opts.get("dataset"), run)


def _verify_cfg(opts: dict):
    from seqship.pipeline.stages import VerifyConfig

    return VerifyConfig(atol=opts["atol"], rtol=opts["rtol"], seed=opts.get("seed", 0))


class TrainProgress:
    """Renders the train stage's progress events as one progress bar per epoch on stderr."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "epoch_start":
            self.bar = click.progressbar(
                length=info["steps"],
                label=f"epoch {info['epoch']}/{info['epochs']}",
                file=sys.stderr,
                item_show_func=lambda item: item,
                show_eta=False,
            )
            self.bar.__enter__()
        elif event == "step" and self.bar is not None:
            self.bar.update(1, f"loss {info['loss']:.4f}")
        elif event == "epoch_end" and self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
            click.echo(
                f"  epoch {info['epoch']}: loss {info['train_loss']:.4f}  val acc {info['val_accuracy']:.4f}  "
                f"val macro-F1 {info['val_macro_f1']:.4f}{'  (best)' if info['best'] else ''}",
                err=True,
            )


def _report(results, run, as_json: bool, report: Path | None = None) -> None:
    from seqship.runtime import bundle as bundle_format

    if as_json:
        out = {"ok": True, "run": run.name, "run_dir": str(run.root), "stages": [r.to_dict() for r in results]}
        if (run.bundle_dir / bundle_format.MANIFEST).is_file():
            out["bundle"] = str(run.bundle_dir)
        if report is not None:
            out["report"] = str(report)
        for r in results:
            if r.stage == "train":
                out["metrics"] = r.summary
            if r.stage == "verify":
                out["parity"] = r.summary
            if r.stage == "cv":
                out["cv"] = r.summary
            if r.stage == "baseline":
                out["baseline"] = r.summary
            if r.stage == "package" and "baseline" not in out:  # one fitted earlier that the card compares with
                from seqship.pipeline.stages import card_baseline

                kept = card_baseline(run)
                if kept is not None:
                    out["baseline"] = kept
        click.echo(json.dumps(out, indent=1, ensure_ascii=False, default=str))
        return
    for r in results:
        click.echo(f"{r.stage:<8} {'reused' if r.skipped else 'done  '} {r.seconds:7.1f}s  {r.path}")
    for r in results:
        if r.stage == "train":
            click.echo(f"test accuracy {r.summary['test_accuracy']:.4f}, macro-F1 {r.summary['test_macro_f1']:.4f}")
        if r.stage == "verify":
            worst = ", ".join(f"{b} {v:.1e}" for b, v in r.summary["max_abs_by_backend"].items())
            click.echo(
                f"parity passed (max |diff|: {worst}); test-set label agreement {r.summary['test_set_label_agreement']:.2%}"
            )
        if r.stage == "package":
            click.echo(f"bundle: {r.path}")
        if r.stage == "baseline":
            b = r.summary
            click.echo(
                f"linear baseline: test accuracy {b['test_accuracy']:.4f}, macro-F1 {b['test_macro_f1']:.4f} "
                f"({b['features']}; C={b['C']:g}, class weight {b['class_weight']})"
            )
        if r.stage == "cv":
            c = r.summary
            click.echo(
                f"{c['folds']}-fold cross-validation: accuracy {c['accuracy_mean']:.4f} ± {c['accuracy_std']:.4f}, "
                f"macro-F1 {c['macro_f1_mean']:.4f}"
            )
    if report is not None:
        click.echo(f"report: {report}")


# --- pipeline run ... ---------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def run() -> None:
    """Run the whole pipeline or one stage of it (each stage reuses the previous one's outputs)."""
    from seqship.pipeline import pin_blas_for_reproducibility

    pin_blas_for_reproducibility()  # before torch is imported: one seed, one model


THREADS_OPTION = click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="Threads for training and the linear baseline [default: 1, which degrades least when other programs share the cores; see pipeline/bench/README.md].",
)
RENDEZVOUS_OPTION = click.option(
    "--rendezvous-timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    envvar="SEQSHIP_RENDEZVOUS_TIMEOUT",
    help="Under torchrun (or WORLD_SIZE > 1 in the environment): seconds to wait for every process to join "
    "[env SEQSHIP_RENDEZVOUS_TIMEOUT; default: 120].",
)
CV_OPTION = click.option(
    "--cv",
    "cv_folds",
    type=click.IntRange(2),
    default=None,
    help="Also cross-validate: K folds over all the data, each fold the test set once (e.g. --cv 10 for mr).",
)


@run.command("all", context_settings=CONTEXT)
@common_options
@data_options
@train_options
@verify_options
@CV_OPTION
@THREADS_OPTION
@RENDEZVOUS_OPTION
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also fit the linear baseline (the `baseline` extra) that the report compares the model with.",
)
@errors_handled
def run_all_cmd(**opts) -> None:
    """Every stage: data -> train -> baseline -> export -> verify -> package (-> cv with --cv K), then report.html.

    Stages whose inputs are unchanged since their last run are reused (use --force to redo them).
    The bundle lands in <artifacts-dir>/<run-name>/bundle/, the report beside it in report.html.

    \b
    Example:
      pipeline run all --data-dir ../shared/data --epochs 20 --json
      pipeline run all --dataset mr --cv 10
    """
    from seqship.pipeline.stages import run_all

    if _follower(opts):
        return
    r = _run(opts)

    def work():
        return run_all(
            r,
            _data_cfg(opts),
            _train_cfg(opts),
            _verify_cfg(opts),
            opts["data_dir"],
            opts["force"],
            progress=None if opts["as_json"] else TrainProgress(),
            cv_folds=opts["cv_folds"] or 0,
            threads=opts["threads"],
            baseline=opts["baseline"],
        )

    from seqship.pipeline.runs import run_lock

    with run_lock(r):  # the report too: another command must not change the stages it describes
        results = work()
        report = _write_report(r, opts["as_json"])
    _report(results, r, opts["as_json"], report=report)


def _follower(opts: dict) -> bool:
    """Under torchrun: True on a rank other than 0, which has trained its share and ends here
    (pipeline.distributed.dispatch_rank)."""
    from seqship.pipeline import distributed

    if opts.get("cv_folds") and distributed.launched():
        raise click.UsageError("--cv does not run under torchrun: cross-validate in one process (`pipeline run cv`)")
    return distributed.dispatch_rank(opts.get("device"), opts.get("threads"), opts.get("rendezvous_timeout"))


def _write_report(r, as_json: bool, strict: bool = False) -> Path | None:
    """report.html for the run. After `run all` a failing report is a warning: the bundle is already made."""
    from seqship.pipeline.report import write_report

    if strict:
        return write_report(r)
    try:
        return write_report(r)
    except Exception as e:  # noqa: BLE001 - reported, never hides the stages' own result
        click.echo(
            f"Warning: report.html was not written ({type(e).__name__}: {e}); `pipeline run report` retries", err=True
        )
        return None


@run.command("cv", context_settings=CONTEXT)
@common_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="Training seed.")
@train_options
@click.option("--folds", type=click.IntRange(2), default=10, show_default=True, help="Number of folds.")
@THREADS_OPTION
@errors_handled
def run_cv_cmd(**opts) -> None:
    """K-fold cross-validation over the data stage's rows, with these training options; updates report.html."""
    from seqship.pipeline.distributed import launched
    from seqship.pipeline.stages import stage_cv

    if launched():
        raise click.UsageError("`run cv` does not run under torchrun: cross-validate in one process")
    opts.setdefault("dataset", "names")
    r = _run(opts)
    result = stage_cv(r, _train_cfg(opts, r), opts["folds"], opts["force"], threads=opts["threads"])
    report = _write_report(r, opts["as_json"]) if r.record("train") else None
    _report([result], r, opts["as_json"], report=report)


@run.command("report", context_settings=CONTEXT)
@common_options
@errors_handled
def run_report_cmd(**opts) -> None:
    """Write report.html for a run from the stages it has (data and train at least)."""
    r = _run(opts)
    if r.record("train") is None:
        raise fail(
            SeqshipError(f"run {r.name!r} has no train stage in {r.root}: run `pipeline run all` first"),
            opts["as_json"],
        )
    from seqship.pipeline.runs import run_lock

    with run_lock(r):
        report = _write_report(r, opts["as_json"], strict=True)
    _report([], r, opts["as_json"], report=report)


@run.command("data", context_settings=CONTEXT)
@common_options
@data_options
@errors_handled
def run_data_cmd(**opts) -> None:
    """Load, clean, de-duplicate and split the data (grouped by text, stratified by label)."""
    from seqship.pipeline.stages import stage_data

    r = _run(opts)
    _report([stage_data(r, _data_cfg(opts), opts["data_dir"], force=opts["force"])], r, opts["as_json"])


@run.command("train", context_settings=CONTEXT)
@common_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="Training seed.")
@train_options
@THREADS_OPTION
@RENDEZVOUS_OPTION
@errors_handled
def run_train_cmd(**opts) -> None:
    """Train on the data stage's splits; keep the checkpoint with the best validation macro-F1."""
    from seqship.pipeline.stages import stage_train

    opts.setdefault("dataset", "names")
    if _follower(opts):
        return
    r = _run(opts)
    progress = None if opts["as_json"] else TrainProgress()
    _report([stage_train(r, _train_cfg(opts, r), opts["force"], progress, threads=opts["threads"])], r, opts["as_json"])


@run.command("baseline", context_settings=CONTEXT)
@common_options
@click.option(
    "--seed", type=SEED, default=None, help="Seed of the baseline's fit [default: the run's training seed, else 0]."
)
@click.option(
    "--tokenizer",
    type=click.Choice(["char", "word"]),
    default=None,
    help="Features: char n-grams (char) or word + char n-grams (word) [default: the run's model's tokenizer].",
)
@click.option("--lowercase/--keep-case", default=None, help="[default: as the run's model]")
@THREADS_OPTION
@errors_handled
def run_baseline_cmd(**opts) -> None:
    """Fit the linear baseline (TF-IDF n-grams + logistic regression; C and class weighting picked on
    validation macro-F1) on the data stage's splits; the report, the card and `pipeline results` compare
    the model with it. Needs the `baseline` extra (scikit-learn). Its features follow the tokenizer option
    (char n-grams for char, word + char n-grams for word).
    """
    from seqship.pipeline.stages import baseline_options, card_baseline_outdated, stage_baseline

    opts.setdefault("dataset", "names")
    r = _run(opts)
    opts = baseline_options(r, opts)  # read text as the run's model does, unless told otherwise
    result = stage_baseline(r, _train_cfg(opts, r), opts["force"], threads=opts["threads"])
    if card_baseline_outdated(r):
        log.warning(
            "the bundle's card compares the model with another baseline than this one: run `pipeline run "
            "package` (or `pipeline run all`) to bring it up to date"
        )
    _report([result], r, opts["as_json"])


@run.command("export", context_settings=CONTEXT)
@common_options
@errors_handled
def run_export_cmd(**opts) -> None:
    """Export the trained model to model.pt (TorchScript) and model.onnx, and check the contract."""
    from seqship.pipeline.stages import stage_export

    r = _run(opts)
    _report([stage_export(r, opts["force"])], r, opts["as_json"])


@run.command("verify", context_settings=CONTEXT)
@common_options
@verify_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random probe inputs.")
@errors_handled
def run_verify_cmd(**opts) -> None:
    """The parity gate: exports vs eager PyTorch on probes and on the whole test set. Exit 1 on any mismatch."""
    from seqship.pipeline.stages import stage_verify

    r = _run(opts)
    _report([stage_verify(r, _verify_cfg(opts), opts["force"])], r, opts["as_json"])


@run.command("package", context_settings=CONTEXT)
@common_options
@errors_handled
def run_package_cmd(**opts) -> None:
    """Write the bundle (manifest with sha256 of every file, model files, tokenizer, model card)."""
    from seqship.pipeline.stages import stage_package

    r = _run(opts)
    _report([stage_package(r, opts["force"])], r, opts["as_json"])


# --- using a bundle -------------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option(
    "--bundle",
    "bundle_dir",
    required=True,
    type=click.Path(path_type=Path),
    envvar="SEQSHIP_BUNDLE",
    help="Bundle folder [env SEQSHIP_BUNDLE].",
)
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True, help="Labels to list per text.")
@click.option(
    "--providers",
    default="auto",
    show_default=True,
    envvar="SEQSHIP_PROVIDERS",
    help="auto, cpu, cuda, or a comma-separated list of onnxruntime providers [env SEQSHIP_PROVIDERS].",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="CPU: batches scored at once, each on a single-threaded session [default: all cores]; CUDA: intra-op threads.",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(),
    default=None,
    help="Score this file instead of TEXT arguments (see --format); with --engine ray, a file or a folder of "
    ".txt/.jsonl/.parquet files, a local path or a URI (s3://, gs://, abfs://, hdfs://).",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(),
    default=None,
    help="With --input: write JSON lines here (a .csv/.tsv name: a table of index, id, text, label, score...), "
    "atomically; never the input file; a FIFO or /dev/stdout is streamed into [default: stdout]. "
    "With --engine ray: a folder or URI of part files and summary.json, written last (`pipeline check-output`).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "lines", "csv", "tsv"]),
    default="auto",
    show_default=True,
    help="--input format; auto: jsonl for .jsonl/.ndjson, csv for .csv, tsv for .tsv, Parquet for .parquet "
    "(pyarrow), else one text per line. Lines end at CRLF, LF or CR; blank lines are skipped.",
)
@click.option(
    "--text-column", default="text", show_default=True, help="--input CSV/TSV column or JSONL key holding the text."
)
@click.option(
    "--id-column",
    default="id",
    show_default=True,
    help="--input CSV/TSV column or JSONL key copied into each output line as 'id', when present.",
)
@pin_option()
@click.option(
    "--unicode-mismatch",
    type=click.Choice(["refuse", "warn"]),
    default="refuse",
    show_default=True,
    help="When this Python's Unicode version differs from the tokenizer's: refuse texts whose ids could differ, or warn and score all.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="With --input: score in this process, or on a Ray cluster (Ray Data; the `ray` extra).",
)
@click.option(
    "--ray-address",
    default=None,
    envvar="RAY_ADDRESS",
    help="--engine ray: the cluster to use (HEAD:6379; run it on a node of the cluster) [env RAY_ADDRESS; default: start a local Ray].",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="--engine ray: scoring actors, one CPU each [default: the cluster's CPUs].",
)
@click.option(
    "--output-format",
    type=click.Choice(["jsonl", "parquet"]),
    default="jsonl",
    show_default=True,
    help="--engine ray: the part files' format.",
)
@click.argument("texts", nargs=-1)
@errors_handled
def predict(
    bundle_dir,
    top_k,
    providers,
    threads,
    input_path,
    output_path,
    fmt,
    text_column,
    id_column,
    expect_sha256,
    unicode_mismatch,
    engine,
    ray_address,
    workers,
    output_format,
    texts,
) -> None:
    """Label texts with a bundle; prints one JSON object per text. Needs no torch.

    Texts come from the arguments, from --input FILE (streamed in bounded memory, with a progress bar
    when --output is given), or one per line from stdin. Each output line carries the input's index
    (and its id, from --id-column); a text that cannot be scored (empty after normalisation, unreadable)
    gets {"index", "error"} and the exit code is 1. The provider that really runs is logged on stderr.

    \b
    Examples:
      pipeline predict --bundle artifacts/names/bundle Nguyen Schmidt --top-k 3
      pipeline predict --bundle artifacts/names/bundle --input names.txt --output labels.jsonl
      pipeline predict --bundle artifacts/mr/bundle --input reviews.csv --text-column review --id-column review_id
      cut -f1 names.tsv | pipeline predict --bundle artifacts/names/bundle
      pipeline predict --bundle artifacts/names/bundle --input texts/ --output scored/ --engine ray --workers 2
    """
    expect_sha256 = trusted_digests(expect_sha256)[0]  # usage errors first, before any file is read
    if engine != "ray" and input_path is not None:  # a str until here: --engine ray also takes URIs
        input_path = Path(input_path)
    if engine == "ray":
        return _predict_ray(
            bundle_dir,
            top_k,
            providers,
            threads,
            input_path,
            output_path,
            fmt,
            text_column,
            id_column,
            expect_sha256,
            unicode_mismatch,
            ray_address,
            workers,
            output_format,
            texts,
        )
    for name, value, default in (
        ("--ray-address", ray_address, None),
        ("--workers", workers, None),
        ("--output-format", output_format, "jsonl"),
    ):
        if value != default and not (name == "--ray-address" and os.environ.get("RAY_ADDRESS") == value):
            raise click.UsageError(f"{name} applies to --engine ray")
    if output_path is not None and input_path is None:
        raise click.UsageError("--output needs --input")
    if input_path is not None and texts:
        raise click.UsageError("give TEXT arguments or --input, not both")
    if input_path is not None and input_path.is_dir():
        raise click.BadParameter(
            f"{input_path}: a folder; give a file, or score a folder with --engine ray", param_hint="--input"
        )
    if input_path is not None and not input_path.exists():
        raise click.BadParameter(f"{input_path}: no such file", param_hint="--input")
    if output_path is not None:  # a str until here: Path() would drop the trailing "/" that says "a folder"
        if output_path.endswith(("/", os.sep)) or Path(output_path).is_dir():
            raise click.BadParameter(f"{output_path}: a folder; give a file path", param_hint="--output")
        output_path = Path(output_path)
    from seqship.pipeline import predict as scoring

    predictor = scoring.load_predictor(bundle_dir, providers, threads, expect_sha256, unicode_mismatch, top_k)
    log.info("scoring with %s", predictor.provider)
    if input_path is not None:
        stats = _predict_file(predictor, input_path, output_path, fmt, top_k, text_column, id_column)
        if stats.errors:
            raise click.ClickException(
                f"{stats.errors} of {stats.texts} texts could not be scored (see their 'error' lines)"
            )
        return
    if texts:
        batch = scoring.decode_arguments(texts)
    elif sys.stdin is None or getattr(sys.stdin, "buffer", None) is None:
        raise click.UsageError("no texts: give TEXT arguments, --input FILE, or texts on stdin")
    else:
        batch = scoring.read_stdin(sys.stdin.buffer)
    errors = scoring.write_results(predictor, batch, functools.partial(click.echo, nl=False), top_k)
    if errors:
        raise click.ClickException(f"{errors} of {len(batch.texts)} texts could not be scored")


def _predict_ray(
    bundle_dir,
    top_k,
    providers,
    threads,
    input_path,
    output_path,
    fmt,
    text_column,
    id_column,
    expect_sha256,
    unicode_mismatch,
    ray_address,
    workers,
    output_format,
    texts,
) -> None:
    """`predict --engine ray`: a Ray Data job over a file or a folder of files into an output folder."""
    if texts or input_path is None or output_path is None:
        raise click.UsageError("--engine ray scores --input PATH (a file or a folder) into --output DIR")
    if fmt != "auto":
        raise click.UsageError(
            "--engine ray reads each file by its suffix (.txt, .jsonl/.ndjson, .parquet): leave --format out"
        )
    if threads is not None:
        raise click.UsageError(
            "--threads applies to --engine local; with --engine ray, each worker is one CPU: use --workers"
        )
    if unicode_mismatch != "refuse":
        raise click.UsageError("--unicode-mismatch warn applies to --engine local")
    from seqship.pipeline.predict import parse_providers
    from seqship.pipeline.runs import require_bundle
    from seqship.runtime.ray import is_uri, score_with_ray

    if not is_uri(input_path) and not Path(input_path).exists():
        raise click.BadParameter(f"{input_path}: no such file or folder", param_hint="--input")

    ray_module = sys.modules.get("ray")
    ray_was_running = ray_module is not None and ray_module.is_initialized()
    bar = click.progressbar(length=1, label="scoring on ray", file=sys.stderr)
    try:
        with bar:

            def progress(done: int, total: int) -> None:
                bar.length = max(1, total)
                bar.update(done - bar.pos)

            summary = score_with_ray(
                require_bundle(bundle_dir),
                input_path,
                output_path,
                ray_address=ray_address,
                workers=workers,
                output_format=output_format,
                top_k=top_k,
                text_column=text_column,
                id_column=id_column,
                expected_sha256=expect_sha256,
                providers=parse_providers(providers),
                on_progress=progress,
            )
    finally:  # a Ray instance this command started ends with it, error or not (one process may run several)
        ray = sys.modules.get("ray")
        if not ray_was_running and ray is not None and ray.is_initialized():
            ray.shutdown()
    click.echo(
        f"{summary.scored} scored, {summary.errors} errors -> {output_path} (ray {summary.ray}, {summary.workers} "
        f"workers on {summary.nodes} node(s), {summary.texts_per_second:,.0f} texts/s)",
        err=True,
    )
    if summary.errors:
        raise click.ClickException(
            f"{summary.errors} of {summary.rows_in} texts could not be scored (see their 'error' rows)"
        )


def _predict_file(
    predictor, input_path: Path, output_path: Path | None, fmt: str, top_k: int, text_column: str, id_column: str
):
    """Score --input into --output (with a progress bar), or to stdout as the lines are ready."""
    from seqship.pipeline.predict import score_file

    ctx = click.get_current_context(silent=True)
    require_id = ctx is not None and ctx.get_parameter_source("id_column") is click.core.ParameterSource.COMMANDLINE
    kw = {"fmt": fmt, "top_k": top_k, "text_column": text_column, "id_column": id_column, "require_id": require_id}
    write = functools.partial(click.echo, nl=False)
    if output_path is None:
        return score_file(predictor, input_path, None, write, **kw)
    size = max(1, input_path.stat().st_size)
    with click.progressbar(length=size, label=f"scoring {input_path.name}", file=sys.stderr) as bar:
        done = [0]

        def progress(pos: int, n: int) -> None:
            bar.update(pos - done[0])
            done[0] = pos

        stats = score_file(predictor, input_path, output_path, write, on_progress=progress, **kw)
    click.echo(f"{stats.scored} scored, {stats.errors} errors -> {output_path} ({predictor.provider})", err=True)
    return stats


@cli.command(context_settings=CONTEXT)
@click.option(
    "--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder."
)
@click.option(
    "--texts",
    "texts_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Real texts (one per line, UTF-8) to compare text-in -> label-out as well as the probes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@pin_option()
@verify_options
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random probe inputs.")
@errors_handled
def verify(bundle_dir: Path, texts_path: Path | None, as_json: bool, expect_sha256: str | None, **opts) -> None:
    """Re-check a shipped bundle: its model.onnx against its own model.pt, and every file's sha256.

    Exit 1, with the parity table, when the ONNX model computes something else (for instance after a
    hand edit), a file no longer matches the manifest, or the bundle does not load as an application
    would load it (Predictor.load's checks). The same model.onnx is also run in every ONNX engine
    installed (onnx.reference, OpenVINO, tract with the `engines` extra; onnxruntime-node and -web where
    runtime/js is installed). Needs the `train` extra (torch).

    \b
    Example:
      pipeline verify --bundle artifacts/names/bundle --texts names.txt
    """
    from seqship.exporters.parity import format_table
    from seqship.pipeline.predict import read_texts
    from seqship.pipeline.runs import require_bundle
    from seqship.pipeline.verify import verify_bundle

    expect_sha256 = trusted_digests(expect_sha256)[0]

    def work():
        texts = read_texts(texts_path) if texts_path is not None else None
        return verify_bundle(require_bundle(bundle_dir), _verify_cfg(opts), texts, expected_sha256=expect_sha256)

    report = work()
    if as_json:
        click.echo(json.dumps({"ok": report["passed"], "parity": report}, indent=1, ensure_ascii=False))
    else:
        click.echo(format_table(report))
    if not report["passed"]:
        raise click.ClickException(f"bundle {bundle_dir} failed verification")


@cli.command(context_settings=CONTEXT)
@click.option(
    "--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder."
)
@click.option(
    "--texts",
    "texts_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Real texts, one per line [default: the test split of the run the bundle belongs to].",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=lambda: os.cpu_count() or 1,
    show_default="all cores",
    help="Intra-op threads for every contender.",
)
@click.option(
    "--repeats", type=click.IntRange(1), default=5, show_default=True, help="Repeats per figure (medians are reported)."
)
@click.option(
    "--latency-texts", type=click.IntRange(1), default=300, show_default=True, help="Texts timed one at a time."
)
@click.option("--bulk-texts", type=click.IntRange(1), default=10_000, show_default=True, help="Texts per bulk repeat.")
@click.option(
    "--cold-repeats",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Fresh processes per cold-start figure.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pin_option()
@errors_handled
def bench(
    bundle_dir, texts_path, threads, repeats, latency_texts, bulk_texts, cold_repeats, as_json, expect_sha256
) -> None:
    """Measure the bundle's predictor against eager PyTorch, TorchScript and plain onnxruntime.

    One-text latency (p50/p99), bulk throughput, cold start (wall time and peak RSS of a fresh
    process), efficiency (useful FLOP/s vs this machine's matmul peak) and the run's stage times,
    with ratios from this run alone. A contender whose outputs differ from eager PyTorch is refused.
    Needs the `train` extra (torch).

    \b
    Example:
      pipeline bench --bundle artifacts/names/bundle --json
    """
    from seqship.pipeline.bench import BenchConfig, bench_texts, format_report, run_bench
    from seqship.pipeline.runs import require_bundle
    from seqship.runtime.bundle import read_pinned_manifest

    pin = trusted_digests(expect_sha256)[0]

    def work():
        read_pinned_manifest(require_bundle(Path(bundle_dir)), pin)  # not the pinned bundle: refused first
        texts = bench_texts(bundle_dir, texts_path)
        cfg = BenchConfig(
            threads=threads,
            repeats=repeats,
            latency_texts=latency_texts,
            bulk_texts=bulk_texts,
            cold_repeats=cold_repeats,
        )
        return run_bench(
            require_bundle(Path(bundle_dir)),
            texts,
            cfg,
            progress=lambda msg: None if as_json else click.echo(msg + " ...", err=True),
            expected_sha256=pin,
        )

    result = work()
    click.echo(json.dumps(result, indent=1) if as_json else format_report(result))


@cli.command(context_settings=CONTEXT)
@click.option(
    "--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundle folder."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (anything but loopback is warned about).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option(
    "--ort-web",
    "ort_web",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="SEQSHIP_ORT_WEB",
    help="onnxruntime-web: the npm --prefix it was installed into, its package folder or its dist/ "
    "[env SEQSHIP_ORT_WEB; default: the checkout's runtime/js/node_modules, else ~/.cache/seqship/ort-web].",
)
@pin_option()
@errors_handled
def demo(bundle_dir: Path, host: str, port: int, ort_web: Path | None, expect_sha256) -> None:
    """Serve a page that runs the bundle in your browser (onnxruntime-web, WebAssembly).

    Type a text and see the top-3 labels as bars, updated as you type. The server only serves static
    files: the page, the JavaScript predictor, onnxruntime-web and the files the bundle's manifest lists,
    and only to requests addressed to 127.0.0.1, localhost or [::1] (or the --host given). It needs
    onnxruntime-web: in a checkout, `npm ci --prefix runtime/js --ignore-scripts` once; from an installed
    seqship, `npm install --prefix ~/.cache/seqship/ort-web onnxruntime-web@VERSION` (the error says which).

    \b
    Example:
      pipeline demo --bundle artifacts/names/bundle     # then open http://127.0.0.1:8000/
    """
    from seqship.pipeline.runs import require_bundle
    from seqship.runtime.demo import make_server

    pin = trusted_digests(expect_sha256)[0]
    try:
        server = make_server(require_bundle(bundle_dir), host, port, ort_web=ort_web, expected_sha256=pin)
    except (SeqshipError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if not server.loopback_only:
        click.echo(
            f"warning: listening on {host}, not a loopback address: anyone who can reach this machine "
            f"on port {server.port} can fetch the page and the bundle",
            err=True,
        )
    click.echo(f"serving {bundle_dir} at {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.command(context_settings=CONTEXT)
@click.option(
    "--bundle",
    "bundles",
    multiple=True,
    metavar="[NAME=]DIR",
    help="A bundle folder to serve, as model NAME (default: the run's name); repeat for more models. "
    "Give --bundle or --model-repository.",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Serve the bundles of DIR/<model>/<version>/ (Triton's layout; a version is a positive integer); "
    "every version is served, the unversioned paths answer from the newest.",
)
@click.option(
    "--model-control-mode",
    type=click.Choice(["none", "poll", "explicit"]),
    default="none",
    show_default=True,
    help="With --model-repository: none (load at start-up only), poll (load new complete versions and unload "
    "removed ones every --repository-poll-secs), explicit (load and unload on POST /v2/repository/...).",
)
@click.option(
    "--repository-poll-secs",
    type=click.FloatRange(0.05, 3600),
    default=5.0,
    show_default=True,
    help="With --model-control-mode poll: how often the repository is looked at.",
)
@click.option(
    "--repository-pins",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="With --model-repository: a file of `MODEL SHA256` lines (several per model allowed), re-read at "
    "every load; only a version whose bundle digest is listed for its model is loaded.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free port).")
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve the protocol's gRPC service (inference.GRPCInferenceService) on this port (0: any free "
    "port; Triton uses 8001). Off unless given.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Texts per batch when concurrent requests are coalesced; 1 turns batching off.",
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(0, 60_000),
    default=0.0,
    show_default=True,
    help="How long a batch waits for more texts after its first (0: it takes what queued while the "
    "scoring threads were busy, which under load is already a full batch).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=lambda: os.cpu_count() or 1,
    show_default="all cores",
    help="Batches scored at once, each on a single-threaded onnxruntime session.",
)
@click.option(
    "--max-texts", type=click.IntRange(1), default=1024, show_default=True, help="Texts per request (more: 413)."
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1024),
    default=8 << 20,
    show_default=True,
    help="Request body size, after decompression (more: 413).",
)
@click.option(
    "--max-queue-texts",
    type=click.IntRange(1),
    default=8192,
    show_default=True,
    help="Texts waiting per model before requests are refused with 503 and Retry-After.",
)
@click.option(
    "--max-buffered-bytes",
    type=click.IntRange(2048),
    default=None,
    show_default="8 x --max-body-bytes",
    help="Bytes of request bodies (as received, and inflated) held by all requests in flight together; "
    "beyond it: 503 with Retry-After.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="To receive a request's body (else 408), and for its texts to be scored (else 503).",
)
@click.option(
    "--drain-timeout-s",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="After SIGTERM: how long requests in flight get to finish before they are cut off (503).",
)
@click.option(
    "--drain-delay-s",
    type=click.FloatRange(0, 3600),
    default=0.0,
    show_default=True,
    help="After SIGTERM: keep accepting this long, readiness answering 503, so that a load balancer "
    "(a Kubernetes Service) stops sending here before the listener closes.",
)
@click.option(
    "--providers",
    default="auto",
    show_default=True,
    envvar="SEQSHIP_PROVIDERS",
    help="auto, cpu, cuda, or a comma-separated list of onnxruntime providers [env SEQSHIP_PROVIDERS].",
)
@pin_option(many=True)
@click.option(
    "--unicode-mismatch",
    type=click.Choice(["refuse", "warn"]),
    default="refuse",
    show_default=True,
    help="As for `pipeline predict`.",
)
@click.option("--access-log", is_flag=True, help="Log every request on stderr (off by default).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes on the one port, each with its own event loop, batcher and --threads (past one "
    "process's event loop); /metrics sums them all; a worker that dies drains the rest, exit 1.",
)
@errors_handled
def serve(
    bundles,
    model_repository,
    model_control_mode,
    repository_poll_secs,
    repository_pins,
    host,
    port,
    grpc_port,
    max_batch,
    max_delay_ms,
    threads,
    max_texts,
    max_body_bytes,
    max_queue_texts,
    max_buffered_bytes,
    timeout_s,
    drain_timeout_s,
    drain_delay_s,
    providers,
    expect_sha256,
    unicode_mismatch,
    access_log,
    workers,
) -> None:
    """Serve bundles over HTTP with the Open Inference Protocol (KServe v2), as Triton and KServe do.

    Every bundle is verified (as Predictor.load verifies it) before the port opens. Concurrent requests
    are batched together (--max-batch, --max-delay-ms). --grpc-port adds the protocol's gRPC service;
    --model-repository serves DIR/<model>/<version>/ bundles, reloaded by poll or on request. SIGTERM or
    Ctrl-C drains: no new connections, every accepted request is answered, exit 0. Needs the `serve` extra.

    \b
    Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/NAME[/versions/V][/ready];
               POST /v2/models/NAME[/versions/V]/infer (JSON, or binary tensors); POST /predict {"texts": [...]};
               POST /v2/repository/index, /v2/repository/models/NAME/load|unload (--model-repository);
               GET /metrics (Prometheus); GET / (this list).
    \b
    Example:
      pipeline serve --bundle artifacts/names/bundle --port 8000
      curl -s localhost:8000/predict -d '{"texts": ["Nguyen"], "top_k": 3}'
      pipeline serve --model-repository models/ --model-control-mode poll --grpc-port 8001
    """
    from seqship.pipeline.predict import parse_providers
    from seqship.runtime.serve import Limits, load_models
    from seqship.runtime.serve import serve as run_server

    if bool(bundles) == (model_repository is not None):
        raise click.UsageError("give --bundle (one or more) or --model-repository, not both")
    if model_repository is None and (model_control_mode != "none" or repository_pins is not None):
        raise click.UsageError("--model-control-mode and --repository-pins apply to a --model-repository")
    if model_repository is not None and expect_sha256:
        raise click.UsageError("--expect-sha256 pins --bundle; a repository's pins are in --repository-pins FILE")
    if workers > 1 and model_control_mode == "explicit":
        raise click.UsageError(
            "--model-control-mode explicit changes the one process a request reaches, one of --workers "
            f"{workers}: use poll (every worker follows the folder) or --workers 1"
        )
    pins = trusted_digests(expect_sha256, len(bundles)) if bundles else []  # before any bundle is read
    limits = Limits(
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        threads=threads,
        max_body_bytes=max_body_bytes,
        max_texts=max_texts,
        max_queue_texts=max_queue_texts,
        timeout_s=timeout_s,
        drain_timeout_s=drain_timeout_s,
        drain_delay_s=drain_delay_s,
        max_buffered_bytes=max_buffered_bytes,
    )
    limits.validate()  # so are options that cannot work together
    repository = None
    if model_repository is not None:
        from seqship.runtime.predictor import Predictor
        from seqship.runtime.serve.repository import Repository

        provider_list = parse_providers(providers)
        repository = Repository(
            model_repository,
            model_control_mode,
            repository_poll_secs,
            repository_pins,
            lambda path, pin: Predictor.load(
                path,
                providers=provider_list,
                intra_op_num_threads=1,
                expected_sha256=pin,
                unicode_mismatch=unicode_mismatch,
            ),
        )
        models = repository.load_all()
    else:
        models = load_models(list(bundles), pins, parse_providers(providers), unicode_mismatch)
    worker = os.environ.get("SEQSHIP_SERVE_WORKER")  # one of --workers: the parent has said all this
    for m in [] if worker else models.all() if repository else models.values():
        click.echo(
            f"model {m.name} version {m.version}: {m.path} (bundle sha256 {m.predictor.digest}, "
            f"{len(m.predictor.labels)} labels, {m.predictor.provider})",
            err=True,
        )

    def ready(url: str, grpc_address: str | None = None) -> None:
        also = f" and gRPC at {grpc_address}" if grpc_address else ""
        click.echo(f"serving {len(models)} model(s) at {url}{also}  (SIGTERM or Ctrl-C drains and stops)")
        sys.stdout.flush()

    tally = run_server(
        models,
        host,
        port,
        limits,
        access_log=access_log,
        on_ready=ready,
        verbose=logging.getLogger("seqship").level <= logging.DEBUG,
        workers=workers,
        grpc_port=grpc_port,
        repository=repository,
    )
    if worker:  # the parent sums the tallies and says so
        return
    drained = f" (drained in {tally['drain_seconds']:.2f} s)" if tally["drain_seconds"] is not None else ""
    by = f"; by worker: {', '.join(map(str, tally['per_worker']))} accepted" if "per_worker" in tally else ""
    click.echo(f"stopped: {tally['accepted']} requests accepted, {tally['answered']} answered{drained}{by}", err=True)
    problems = list(tally.get("failed", []))
    if tally["cut_off"]:
        problems.append(
            f"{tally['cut_off']} of them with 503 because the drain was cut short "
            f"(--drain-timeout-s {drain_timeout_s:g}, or a second signal)"
        )
    if tally["answered"] != tally["accepted"]:
        problems.append(f"{tally['accepted'] - tally['answered']} accepted requests got no answer")
    if tally["connections_cut"]:
        problems.append(
            f"{tally['connections_cut']} connections were still open at exit (an answer may not have "
            "been delivered: a client that did not read it)"
        )
    if problems:
        raise click.ClickException("; ".join(problems))


@cli.command(context_settings=CONTEXT)
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@pin_option()
@errors_handled
def inspect(bundle_dir: Path, as_json: bool, expect_sha256) -> None:
    """Check a bundle (every file against its manifest, and Predictor.load's checks) and describe it."""
    from seqship.pipeline.runs import require_bundle
    from seqship.runtime import Predictor

    pin = trusted_digests(expect_sha256)[0]
    # "verified" means what an application's load checks, not only the hashes
    b = Predictor.load(
        require_bundle(bundle_dir, "pipeline inspect "), providers="cpu", unicode_mismatch="warn", expected_sha256=pin
    ).bundle
    if as_json:
        click.echo(
            json.dumps(
                {"ok": True, "bundle": str(b.root), "digest": b.digest, "manifest": b.manifest},
                indent=1,
                ensure_ascii=False,
                default=str,
            )
        )
        return
    for line in describe_bundle(b):
        click.echo(line)


def _field(obj, *keys, default="?"):
    """obj[k1][k2]... when every step is a dict holding the key, else default (manifests are free-form beyond
    what the runtime checks)."""
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return default
        obj = obj[k]
    return obj


def _num(x, fmt: str = ".4f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "?"


def describe_bundle(b) -> list[str]:
    """The lines `pipeline inspect` prints; any manifest Predictor.load accepts can be described."""
    m = b.manifest
    lines = [
        f"{b.root}: {_field(m, 'format')} v{_field(m, 'format_version')}, {len(b.labels)} labels, verified as Predictor.load does",
        f"digest (sha256 of manifest.json; pin it with --expect-sha256): {b.digest}",
    ]
    engines = _field(m, "parity", "engines", default={})
    if isinstance(engines, dict) and engines:
        lines.append(
            "verified on: "
            + ", ".join(
                f"{n} {_field(e, 'version')}" + ("" if _field(e, "passed", default=False) is True else " (FAILED)")
                for n, e in engines.items()
            )
        )
    met = _field(m, "metrics", default={})
    if isinstance(met, dict) and met:
        lines.append(f"test accuracy {_num(met.get('test_accuracy'))}, macro-F1 {_num(met.get('test_macro_f1'))}")
    for name, entry in m["files"].items():
        lines.append(f"  {name:<16} {_field(entry, 'bytes')!s:>10} bytes  sha256 {str(_field(entry, 'sha256'))[:16]}…")
    return lines


@cli.command("check-output", context_settings=CONTEXT)
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print what was checked as JSON.")
@errors_handled
def check_output(output: str, as_json: bool) -> None:
    """Check a `predict --engine ray` output (a folder or URI) from its summary.json alone: every part there
    with its rows and sha256, the parts' input ranges tiling every input file (each row in exactly one
    part), nothing else of seqship's beside them. Exit 1 with the problems otherwise.

    \b
    Example:
      pipeline check-output s3://my-bucket/scored/
    """
    from seqship.runtime.ray import check_output as check

    found = check(output)
    if as_json:
        click.echo(json.dumps({"ok": True, **found}))
        return
    click.echo(
        f"{output}: complete: {found['rows']} rows in {found['parts']} parts, every row of "
        f"{found['files']} input file(s) exactly once"
    )


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@errors_handled
def datasets(as_json: bool) -> None:
    """List the datasets `--dataset` accepts and where each is looked for."""
    from dataclasses import asdict

    from seqship.pipeline.data import REGISTRY

    if as_json:
        click.echo(json.dumps({n: asdict(d) for n, d in REGISTRY.items()}, indent=1))
        return
    for name, d in REGISTRY.items():
        where = (
            f"downloaded from {d.download.url} (override: {d.download.env_var(name)})"
            if d.download
            else "no public download"
        )
        defaults = ", ".join(f"{k}={v}" for k, v in d.train_defaults) or "the general defaults"
        click.echo(f"{name:<14} {d.task}\n{'':<14} <data-dir>/{d.folder}/, else {where}; training: {defaults}")


@cli.command(context_settings=CONTEXT)
@click.option(
    "--run",
    "do_run",
    is_flag=True,
    help="Run each dataset's default config end to end first (long: see pipeline/experiments/README.md).",
)
@click.option(
    "--datasets",
    "names",
    default=",".join(["names", "waimai", "chnsenticorp", "shopping-cats", "sst2", "mr"]),
    show_default=True,
    help="Comma-separated registry datasets.",
)
@click.option(
    "--data-dir",
    envvar="SEQSHIP_DATA_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding the registry datasets [env SEQSHIP_DATA_DIR]; else they are downloaded.",
)
@click.option(
    "--artifacts-dir",
    envvar="SEQSHIP_ARTIFACTS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="Where runs are written [env SEQSHIP_ARTIFACTS_DIR; default: the checkout's artifacts/].",
)
@click.option("--force", is_flag=True, help="With --run: redo stages even when their inputs are unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@errors_handled
def results(do_run: bool, names: str, data_dir, artifacts_dir, force: bool, as_json: bool) -> None:
    """Accuracy, macro-F1, train time, parity and bundle size per dataset (as in pipeline/experiments/README.md).

    \b
    Example (every dataset's default config, about an hour on 2 CPU cores):
      pipeline results --run --data-dir ../shared/data
    """
    from seqship.pipeline.data import REGISTRY
    from seqship.pipeline.results import markdown
    from seqship.pipeline.results import results as collect_results

    datasets_ = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in datasets_ if n not in REGISTRY]
    if unknown:
        raise click.BadParameter(
            f"unknown dataset(s) {unknown}; choose from {sorted(REGISTRY)}", param_hint="--datasets"
        )
    if do_run:
        from seqship.pipeline import pin_blas_for_reproducibility

        pin_blas_for_reproducibility()  # before torch is imported

    def progress(row):
        if not as_json:
            click.echo(f"{row['dataset']}: accuracy {row['accuracy']:.4f}", err=True)

    rows = collect_results(artifacts_dir or default_artifacts_dir(), datasets_, data_dir, do_run, force, progress)
    missing = [n for n in datasets_ if n not in {r["dataset"] for r in rows}]
    if as_json:
        click.echo(json.dumps({"rows": rows, "missing": missing}, indent=1))
    else:
        click.echo(markdown(rows))
        if missing:
            click.echo(f"\nnot run yet (use --run): {', '.join(missing)}", err=True)


def reader_gone() -> NoReturn:
    """stdout's reader went away (`pipeline predict ... | head`): stop quietly with SIGPIPE's status, as Unix
    tools do, instead of an error about a broken pipe (and a second one when Python flushes stdout at exit)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(128 + 13)


def main() -> None:
    """Entry point of the `pipeline` command."""
    try:
        try:
            cli(prog_name="pipeline")
        finally:
            sys.stdout.flush()  # here, not at interpreter exit, so that a reader gone by then is caught too
    except BrokenPipeError:
        reader_gone()


if __name__ == "__main__":
    main()
