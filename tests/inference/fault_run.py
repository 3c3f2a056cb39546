"""A cohort run that kills itself (SIGKILL, no clean-up) at its K-th file commit.

Used by ``test_fault_injection.py`` in a subprocess: ``python fault_run.py SLIDES OUT K``.
Every output reaches its final name through ``os.replace`` (``io_utils.atomic_path``, lock
takeovers), so the commits are the moments where an interruption can leave a mixed state;
event ``2i - 1`` kills just before the i-th commit (the temporary file written and fsynced),
event ``2i`` just after it. ``K = 0`` runs to the end. The script prints the number of
commits it made, so the caller knows the range of K.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

OPTS = {"core": 64, "halo": 24, "batch_size": 4, "tissue": False, "workers": 1,
        "progress": False, "resume": True}  # fmt: skip


def _oracle():
    spec = importlib.util.spec_from_file_location(
        "_fault_infer_helpers", Path(__file__).with_name("test_infer.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.oracle()


def main() -> None:
    slides, out, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    real_replace = os.replace
    events = [0]
    commits = [0]

    def event() -> None:
        events[0] += 1
        if events[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *args, **kwargs):
        event()
        real_replace(src, dst, *args, **kwargs)
        commits[0] += 1
        event()

    os.replace = replace
    from wsi_stnuc.inference.cohort import run_cohort

    result = run_cohort([slides], _oracle(), out, **OPTS)
    print(f"commits={commits[0]} failed={result.n_failed} locked={result.n_locked}")


if __name__ == "__main__":
    main()
