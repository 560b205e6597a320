"""Faults the tests cause from outside the code they test: a real `pipeline` process, held at a chosen moment
by patching it in that process (production code has no hook for this)."""

from __future__ import annotations

import sys
import textwrap

# `pipeline ARGS...` in a child that holds a stage for 60 s with its outputs complete in their temporary
# folder but not yet renamed into place -- the worst moment to be killed. argv[1] is the stage's folder.
HELD = textwrap.dedent("""
    import sys, time
    from seqship.pipeline import runs
    from seqship.pipeline.cli import main
    held, commit = sys.argv.pop(1), runs.replace_dir
    def replace_dir(tmp, folder):
        if folder.name == held:
            time.sleep(60)
        return commit(tmp, folder)
    runs.replace_dir = replace_dir
    sys.argv[0] = "pipeline"
    main()
""")


def held_at(stage: str) -> list[str]:
    """The command line of `pipeline` held before `stage` commits; append the command's arguments."""
    from seqship.pipeline.runs import STAGE_DIRS

    return [sys.executable, "-c", HELD, STAGE_DIRS[stage]]
