"""The toy benchmark: the toy world's rule-based evaluator (toy/evaluator.py), served as the
`toy_rules` backend of the srum_evaluator Triton model (toy/rules_evaluator.py), so the toy path
is the same path a real evaluator takes: instruction -> Triton -> text -> parser -> aggregation.

Protocol: one yes/no question per image ("does it show exactly what the prompt says?"); item value 1 or
0; per category accuracy; overall = accuracy over all images (categories weighted by their size, as the
toy world's `score_images` computes it). The prompts are the toy world's (`toy://eval` by default).
"""

from __future__ import annotations

from typing import Any

from ..judging.parse import parse_yes_no
from .protocol import Ask, Benchmark, ItemScore, answer_row, spec


class ToyBenchmark(Benchmark):
    name = "toy"
    title = "toy world (rule-based evaluator)"
    metrics = ("accuracy",)
    unit = "%"
    category_order = ("color", "shape", "spatial", "numeracy", "non-spatial")
    judge_agreement = True     # the toy model's judge reads the same prompts: does it agree with the rules?

    def template_names(self):
        return {"toy": spec(["prompt"])}

    def instruction(self, prompt_text: str) -> str:
        return self.templates.render("toy", prompt=prompt_text)

    async def score(self, ask: Ask, prompt: Any) -> ItemScore:
        a = await ask("match", self.instruction(prompt.text), parse_yes_no)
        rows = [answer_row("match", a)]
        if not a.parsed:
            return ItemScore.unparsed(rows, "the evaluator's answer has no readable yes/no")
        return ItemScore(values={"accuracy": 1.0 if a.value else 0.0}, parsed=True, answers=rows)
