"""The pairwise judge's verdicts equal those computed from transformers' logits of the same
weights, in both orders; a template without its placeholders is refused."""
import numpy as np
import pytest
import torch

from pojax.eval.judge import DEFAULT_TEMPLATE, check_template, fill, judge_margins, judge_preferences, verdicts
from tests.eval.test_tasks import models_, tokenizer  # noqa: F401  (fixture)

TEMPLATE = "{instruction} 1: {output_1} 2: {output_2} Answer:"


def test_judge_verdicts_equal_transformers_logits(models_):  # noqa: F811
    hf, model = models_
    tok = tokenizer()
    instructions = ["what is the sky color", "2+2?", "is the sky blue", "what color", "2+2?", "what is the sky"]
    a = ["blue", "4", "yes", "red green", "3", "grey"]
    b = ["red", "5", "no", "blue", "6 4", "blue sky"]

    def margin(x, y):
        out = []
        for i, u, v in zip(instructions, x, y):
            ids = tok(fill(TEMPLATE, i, u, v))["input_ids"]
            assert max(ids) < hf.config.vocab_size
            with torch.no_grad():
                logits = hf(torch.as_tensor([ids])).logits[0, -1].numpy()
            out.append(logits[tok.convert_tokens_to_ids("1")] - logits[tok.convert_tokens_to_ids("2")])
        return np.asarray(out)

    got_ab, got_ba = judge_margins(model, tok, instructions, a, b, template=TEMPLATE, batch_size=4)
    np.testing.assert_allclose(got_ab, margin(a, b), atol=1e-4)
    np.testing.assert_allclose(got_ba, margin(b, a), atol=1e-4)
    np.testing.assert_array_equal(judge_preferences(model, tok, instructions, a, b, template=TEMPLATE),
                                  verdicts(got_ab, got_ba))


def test_verdicts_cancel_position_bias():
    # a judge that always prefers the first position ties every pair; agreement in both orders decides
    np.testing.assert_array_equal(verdicts([1.0, 1.0, -1.0, -2.0, 0.0], [1.0, -1.0, 1.0, -0.5, 0.0]), [0.5, 1.0, 0.0, 0.5, 0.5])


def test_template_placeholders_are_checked():
    check_template(DEFAULT_TEMPLATE)
    with pytest.raises(ValueError, match=r"config key eval.judge_template: the judge template lacks \{output_2\}"):
        check_template("{instruction} {output_1}")
