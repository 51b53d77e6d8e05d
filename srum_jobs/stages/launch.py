"""`python -m srum_jobs.stages.launch [torchrun options] -- stage NAME OPTIONS`: torchrun, in this process,
over a distributed stage of the stage table (train), passing a worker's exit code through. Every worker runs
`srum stage NAME OPTIONS` (the CLI module), the same entry path as any other stage.

Plain torchrun reports any worker failure as exit 1 with a page of its own traceback, which hides a
configuration error (78) or a full disk (74) from the caller and from a Job's podFailurePolicy. Here the
worker has already printed its one line; the launcher exits with the first failed worker's code and adds
nothing but one line naming the rank. It also dies with the process that started it (`srum run`) and
makes its workers die with it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

from .. import entry, exitcodes
from .spec import CLI_MODULE, STAGES

USAGE = "usage: python -m srum_jobs.stages.launch [torchrun options] -- stage NAME --experiment FILE --round N"


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    torchrun_args, stage_command = argv[:cut], argv[cut + 1:]
    distributed = [name for name, spec in STAGES.items() if spec.distributed]
    if stage_command[:1] != ["stage"] or stage_command[1:2] == [] or stage_command[1] not in distributed:
        print(f"{USAGE}\n(NAME: a distributed stage of the stage table: {', '.join(distributed)})", file=sys.stderr)
        sys.exit(exitcodes.USAGE)
    what = f"stage {stage_command[1]}"
    entry.bind_to_parent()
    entry.stop_on_signals()
    os.environ[entry.PARENT_ENV] = str(os.getpid())    # the workers' parent is this process
    if not any(a.startswith(("--rdzv", "--nnodes", "--master")) for a in torchrun_args):
        torchrun_args = ["--standalone", *torchrun_args]
    # torchrun's own log (rendezvous, "failed (exitcode: 78) local_rank: 0 ...") adds nothing to the worker's
    # line and the launcher's one below it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    with entry.guarded():
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import main as torchrun

        try:
            torchrun([*torchrun_args, "-m", CLI_MODULE, *stage_command])
        except ChildFailedError as e:
            rank, code = _cause(e)
            print(f"error: {what} rank {rank} exited with {code} ({exitcodes.meaning(code)})", file=sys.stderr)
            sys.exit(code if code in exitcodes.MEANING or code > 128 else exitcodes.FAILURE)
        except SignalException as e:
            raise entry.Stopped(int(e.sigval)) from None


def _cause(e) -> tuple:
    """(rank, exit code) of the failure that explains the others: when one worker stops on a real cause
    (78, 74, 75...), its peers fail after it on a broken collective (1); the earliest specific one wins."""
    failures = sorted(e.failures.items(), key=lambda kv: kv[1].timestamp)
    for rank, failure in failures:
        if failure.exitcode not in (exitcodes.FAILURE, exitcodes.OK) and failure.exitcode > 0:
            return rank, failure.exitcode
    rank, failure = failures[0]
    return rank, failure.exitcode


if __name__ == "__main__":
    main()
