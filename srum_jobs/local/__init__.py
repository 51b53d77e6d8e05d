"""Running on one machine: the local executor behind `srum run` (executor.py: stages as child processes,
the lease, stopping), the local Triton judge server it starts (judge_server.py, also `srum judge serve`)
and the process groups both stop (process_groups.py).
"""
