"""A pairwise judge: a local causal LM reads a prompt template with the instruction and two
responses and is scored by the next-token logits of "1" vs "2". Each pair is judged in both
orders to cancel position bias: a wins (1) when both orders prefer it, loses (0) when both
prefer b, and ties (0.5) otherwise."""
from __future__ import annotations

import numpy as np

from pojax.eval.generation import next_token_logits

PLACEHOLDERS = ("{instruction}", "{output_1}", "{output_2}")
DEFAULT_TEMPLATE = (
    "Which response follows the instruction better? Answer with 1 or 2.\n\n"
    "Instruction: {instruction}\n\nResponse 1: {output_1}\n\nResponse 2: {output_2}\n\nBetter response:")


def check_template(template: str, key: str = "eval.judge_template") -> None:
    missing = [p for p in PLACEHOLDERS if p not in template]
    if missing:
        raise ValueError(f"config key {key}: the judge template lacks {', '.join(missing)} "
                         f"(it needs all of {', '.join(PLACEHOLDERS)})")


def fill(template: str, instruction: str, output_1: str, output_2: str) -> str:
    """The template with its placeholders replaced (other braces are left alone)."""
    return (template.replace("{instruction}", instruction).replace("{output_1}", output_1)
            .replace("{output_2}", output_2))


def judge_margins(judge, tokenizer, instructions: list[str], outputs_a: list[str], outputs_b: list[str], *,
                  template: str = DEFAULT_TEMPLATE, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """logit("1") − logit("2") [N] with a shown first, and with b shown first."""
    check_template(template)
    if not len(instructions) == len(outputs_a) == len(outputs_b):
        raise ValueError("judge: instructions, outputs_a and outputs_b need the same length")
    one, two = (tokenizer(f" {d}", add_special_tokens=False)["input_ids"][-1] for d in "12")
    if one == two:
        raise ValueError("judge: the judge's tokenizer maps '1' and '2' to the same token")

    def margin(first, second):
        texts = [fill(template, i, x, y) for i, x, y in zip(instructions, first, second)]
        logits = next_token_logits(judge, tokenizer, texts, batch_size=batch_size)
        return logits[:, one] - logits[:, two]

    return margin(outputs_a, outputs_b), margin(outputs_b, outputs_a)


def verdicts(margin_a_first, margin_b_first) -> np.ndarray:
    """1 when both orders prefer a, 0 when both prefer b, 0.5 otherwise (disagreement or a tie)."""
    ab, ba = np.asarray(margin_a_first), np.asarray(margin_b_first)
    return np.where((ab > 0) & (ba < 0), 1.0, np.where((ab < 0) & (ba > 0), 0.0, 0.5))


def judge_preferences(judge, tokenizer, instructions: list[str], outputs_a: list[str], outputs_b: list[str], *,
                      template: str = DEFAULT_TEMPLATE, batch_size: int = 8) -> np.ndarray:
    """Preference [N] in {0, 0.5, 1} of a over b (module docstring)."""
    return verdicts(*judge_margins(judge, tokenizer, instructions, outputs_a, outputs_b, template=template,
                                   batch_size=batch_size))
