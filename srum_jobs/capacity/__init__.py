"""Capacity: what a real SRUM round costs. `srum plan` estimates wall time and GPU-hours per stage from
stated assumptions (assumptions.py), a user's measured costs (costs_file.py) and arithmetic (plan.py),
printed by render.py; `srum bench costs` measures the per-item costs on the hardware at hand (measure.py).
Nothing is imported here: `srum plan` must not load torch."""
