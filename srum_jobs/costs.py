"""Compatibility name: the cost measurement lives in capacity/measure.py. `srum bench costs` (bench_cli.py,
being rewritten on the science branch) still imports it from here; drop this module once it imports
srum_jobs.capacity.measure."""

from .capacity.measure import costs_file_text, measure_costs  # noqa: F401
