"""Running on one machine: the local executor behind `srum run` (executor.py: stages as child processes,
the lease, stopping), the local Triton judge server it starts (judge_server.py, also `srum judge serve`)
and the process groups both stop (process_groups.py).

The executor's public names are re-exported here, where they were before the package existed.
"""

from .executor import (ALL_STAGES, PRESETS, Children, StageFailed, default_experiment, run_command, run_local,
                       stage_argv)

__all__ = ["ALL_STAGES", "PRESETS", "Children", "StageFailed", "default_experiment", "run_command", "run_local",
           "stage_argv"]
