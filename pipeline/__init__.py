"""seqship's stages and the `pipeline` command: data -> train -> export -> verify -> package."""

if __name__ != "seqship.pipeline":  # the checkout's folder imported under its bare name, from the repository root
    raise ImportError(
        f"seqship's code imports as seqship.pipeline, not {__name__} (one namespace: `from seqship.pipeline import ...`)"
    )

import os
import sys

from seqship.runtime import __version__  # one version for the whole distribution

__all__ = ["__version__", "pin_blas_for_reproducibility"]


def pin_blas_for_reproducibility() -> bool:
    """Make MKL's matrix products bit-reproducible from process to process (and OpenMP wait passively);
    True if it took effect.

    MKL picks code paths by the memory alignment of its inputs, so with the same seed two processes
    trained two different models (about one run in six on the default model). MKL_CBWR pins one
    path; it is read when MKL loads, so this must run before torch is imported (`pipeline run` does).
    AVX2 costs little speed here; COMPATIBLE (for CPUs without AVX2) is about 1.7x slower.
    """
    if "torch" in sys.modules:
        return "MKL_CBWR" in os.environ
    if "MKL_CBWR" not in os.environ:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                avx2 = " avx2" in f.read()
        except OSError:
            avx2 = False
        os.environ["MKL_CBWR"] = "AVX2" if avx2 else "COMPATIBLE"
    # OpenMP threads that wait for a core they do not get spin by default: with one busy process beside
    # it, 2-thread training on 2 cores ran 3.3x slower (31x in an earlier measurement); passive waiting
    # made it 0.9x (pipeline/bench/README.md, "Training on a busy machine"). Read when libgomp loads, like MKL_CBWR.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
