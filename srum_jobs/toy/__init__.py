"""The toy world, a package of its own beside the real-model adapters (models/): a small world of coloured
shapes with a prompt grammar (world.py), plans (plan.py), its networks and pretraining (nets.py,
pretrain.py; base weights in srum_jobs/assets/toy/), a rule-based evaluator (evaluator.py,
rules_evaluator.py), the connected-components boxer (components.py), the VQA set of the understanding
check (vqa_fixture.py), diagnostics, and `srum toy` / `srum bench toy` (commands.py, bench.py).

What the pipeline sees of it goes through the protocols and the registries only (plugin.py): the model
adapter (model.py), the judge backend (judge_backend.py over judge.py's ToyUnderstanding), the boxer,
the `toy://` prompt sources and the `toy` benchmark (evaluation/toy.py). Outside this package only the
CLI (mounting its commands) and the understanding check (its default VQA set, evaluation/understanding.py)
import it by name.
"""
