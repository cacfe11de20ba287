"""pojax inside lm-evaluation-harness (pojax.eval.lm_eval) against lm-eval's own ``hf`` model.

A random tiny Llama with Meta's Llama 3 tokenizer, saved by transformers, is scored by lm-eval
twice on the same local tasks — once through its PyTorch ``HFLM``, once through pojax (lm-eval's
command line, ``python -m pojax.eval.lm_eval``): per-request log-likelihoods agree to 1e-4, the
greedy flags and the generated texts exactly (WikiText's page sums, ~1000 nats, to 2e-6 relative). The tasks are lm-eval task YAMLs over local JSON
files (``dataset_path: json``) in the layouts of GSM8K (generate_until), ARC (multiple choice,
loglikelihood) and WikiText (loglikelihood_rolling over several windows).

Masked-diffusion LMs (LLaDA) are checked against a float64 numpy forward of the golden
checkpoint: a one-token continuation's estimate is exact (every draw masks that token), a
longer one's agrees with the ELBO enumerated over every mask set, and classifier-free guidance
matches the guided logits. A stub model whose generation is known checks generate_until and
LLaDA's greedy check through lm-eval's request path.
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from tests.data.real_tokenizers import real_tokenizers  # noqa: F401,E402 (the session's tokenizers fixture)
from tests.train.helpers import ROOT  # noqa: E402

LLAMA3_VOCAB = 128_256
MAX_LENGTH = 48  # small, so that WikiText pages take several rolling windows and GSM8K contexts are cut

ARC = [
    {"id": "q1", "question": "Which gas do plants take in from the air?",
     "choices": {"text": ["Oxygen", "Carbon dioxide", "Helium", "Neon"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
    {"id": "q2", "question": "What is frozen water called?",
     "choices": {"text": ["Steam", "Ice", "Sand"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "q3", "question": "Which planet is closest to the Sun?",
     "choices": {"text": ["Mercury", "Mars", "Jupiter", "Saturn"], "label": ["1", "2", "3", "4"]},
     "answerKey": "1"},
]
GSM8K = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
     "answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
    {"question": "A box holds 12 eggs. How many eggs are in 3 boxes?",
     "answer": "3 * 12 = <<3*12=36>>36 eggs.\n#### 36"},
    {"question": "Sara reads 10 pages a day for 7 days. How many pages does she read in all?",
     "answer": "10 * 7 = <<10*7=70>>70 pages.\n#### 70"},
]
WIKI = [
    {"page": " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ "
             "playing video game developed by Sega and Media.Vision for the PlayStation Portable . Released in "
             "January 2011 in Japan , it is the third game in the Valkyria series . "},
    {"page": " = Tower Building of the Little Rock Arsenal = \n\n The Tower Building of the Little Rock Arsenal , "
             "also known as U.S. Arsenal Building , is a building located in MacArthur Park in downtown Little "
             "Rock , Arkansas . Built in 1840 , it was part of Little Rock 's first military installation . "},
]

TASKS = {
    "tiny_arc": """task: tiny_arc
dataset_path: json
dataset_kwargs:
  data_files:
    train: {dir}/arc.jsonl
    test: {dir}/arc.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
""",
    "tiny_gsm8k": """task: tiny_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    train: {dir}/gsm8k.jsonl
    test: {dir}/gsm8k.jsonl
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
num_fewshot: 1
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    ignore_case: true
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 12
filter_list:
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
""",
    "tiny_wikitext": """task: tiny_wikitext
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/wiki.jsonl
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 2.0
""",
}


def _jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_tasks(root) -> str:
    """lm-eval task YAMLs over local JSONL files (an --include_path directory)."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    _jsonl(os.path.join(root, "arc.jsonl"), ARC)
    _jsonl(os.path.join(root, "gsm8k.jsonl"), GSM8K)
    _jsonl(os.path.join(root, "wiki.jsonl"), WIKI)
    for name, text in TASKS.items():
        with open(os.path.join(root, f"{name}.yaml"), "w") as f:
            f.write(text.format(dir=root))
    return root


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory, real_tokenizers):
    """A random 2-layer, 32-wide Llama with the Llama 3 vocabulary and Meta's base tokenizer
    (BOS prepended, eos <|end_of_text|>), saved by transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = str(tmp_path_factory.mktemp("lm_eval_llama3"))
    tokenizer = real_tokenizers.get("llama3_base")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=LLAMA3_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 initializer_range=0.5)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


def _evaluate(model, tasks_dir, **kw):
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=tasks_dir, include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=list(TASKS), task_manager=manager,
                                   log_samples=True, bootstrap_iters=0, **kw)


@pytest.fixture(scope="module")
def hf_results(llama3_dir, tasks_dir):
    """lm-eval's own PyTorch model on the three tasks."""
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=llama3_dir, dtype="float32", device="cpu", batch_size=4, max_length=MAX_LENGTH)
    return _evaluate(hf, tasks_dir)


def _cli_samples(out_dir) -> tuple[dict, dict]:
    """(results, {task: samples}) that lm-eval's command line wrote under ``out_dir``."""
    results, samples = None, {}
    for root, _, files in os.walk(out_dir):
        for name in files:
            path = os.path.join(root, name)
            if name.startswith("results") and name.endswith(".json"):
                with open(path) as f:
                    results = json.load(f)
            elif name.startswith("samples_") and name.endswith(".jsonl"):
                task = name[len("samples_"):].rsplit("_", 1)[0]
                with open(path) as f:
                    samples[task] = [json.loads(line) for line in f if line.strip()]
    return results, samples


def test_cli_matches_lm_evals_hf_model_request_for_request(llama3_dir, tasks_dir, hf_results, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pojax.eval.lm_eval", "run", "--model", "pojax", "--model_args",
           f"path={llama3_dir},dtype=float32,max_length={MAX_LENGTH}", "--tasks", *TASKS, "--include_path",
           tasks_dir, "--batch_size", "4", "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    results, samples = _cli_samples(out)
    assert results is not None and set(samples) == set(TASKS), (results, list(samples))
    n_requests = {"tiny_arc": 0, "tiny_gsm8k": 0, "tiny_wikitext": 0}
    for task in TASKS:
        ours = sorted(samples[task], key=lambda s: s["doc_id"])
        theirs = sorted(hf_results["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in theirs]
        for a, b in zip(ours, theirs):
            assert len(a["resps"]) == len(b["resps"])
            for ra, rb in zip(a["resps"], b["resps"]):
                n_requests[task] += 1
                if task == "tiny_gsm8k":
                    assert ra == rb, (a["doc_id"], ra, rb)  # the same greedy text
                elif task == "tiny_arc":
                    (lla, ga), (llb, gb) = ra[0], rb[0]  # the command line's samples file holds them as strings
                    assert float(lla) == pytest.approx(llb, abs=1e-4) and str(ga) == str(gb), (lla, llb, ga, gb)
                else:  # a page's sum over ~130 tokens of ~ -8 nats: float32 sums agree to ~1e-6 relative
                    assert float(ra[0]) == pytest.approx(float(rb[0]), rel=2e-6)
    assert n_requests == {"tiny_arc": 11, "tiny_gsm8k": 3, "tiny_wikitext": 2}
    for task, metric in (("tiny_arc", "acc,none"), ("tiny_wikitext", "word_perplexity,none")):
        assert results["results"][task][metric] == pytest.approx(hf_results["results"][task][metric], rel=1e-4)
    # the rolling windows were several per page, and the greedy texts are not all empty
    assert any(r[0] for s in samples["tiny_gsm8k"] for r in s["resps"])


def test_python_api_generations_and_greedy_flags_match_hf(llama3_dir):
    """PojaxLM in-process (lm-eval's Python API): greedy continuations of a few prompts equal
    HFLM's, and scoring each back gives HFLM's log-likelihood and greedy flag; the flags are
    not all alike (one continuation is scored after a changed context)."""
    from lm_eval.models.huggingface import HFLM

    from pojax.eval.lm_eval import PojaxLM

    ours = PojaxLM(path=llama3_dir, batch_size=4, max_length=MAX_LENGTH)
    hf = HFLM(pretrained=llama3_dir, dtype="float32", device="cpu", batch_size=4, max_length=MAX_LENGTH)
    contexts = ["Question: Tom has 3 apples", "The capital of France is", "Once upon a time"]
    gen = [(c, {"until": ["\n\n"], "max_gen_toks": 6}) for c in contexts]
    texts = ours.generate_until(_instances("generate_until", gen))
    assert texts == hf.generate_until(_instances("generate_until", gen)) and all(texts)
    pairs = [(c, t) for c, t in zip(contexts, texts)] + [(contexts[1], texts[0])]
    a, b = ours.loglikelihood(_instances("loglikelihood", pairs)), hf.loglikelihood(_instances("loglikelihood", pairs))
    assert [g for _, g in a] == [g for _, g in b]
    assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], abs=1e-4)
    assert {g for _, g in a} == {True, False}


def test_soft_capped_model_scores_with_its_cap(tmp_path):
    """Gemma 2's final-logit cap is part of its log-likelihoods: continuation_scores equals the
    log-softmax of transformers' (capped) logits summed over the continuation."""
    import jax.numpy as jnp

    from pojax.eval.lm_eval import causal_batch, continuation_scores
    from pojax.models import from_pretrained
    from tests.models.hf_fixtures import VOCAB, make_checkpoint, torch_logits

    ref = make_checkpoint("gemma2-capped", tmp_path)
    pairs = [([1, 5, 9, 2], [7, 3]), ([4, 4, 8], [11, 12, 13])]
    ids, index, targets, valid = causal_batch(pairs, 32)
    total, _ = continuation_scores(from_pretrained(str(tmp_path)), *map(jnp.asarray, (ids, index, targets, valid)))
    for (ctx, cont), got in zip(pairs, np.asarray(total)):
        z = torch_logits(ref, np.asarray([ctx + cont])).astype(np.float64)[0]
        lp = z - z.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        want = sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont))
        assert got == pytest.approx(want, abs=1e-4)
    assert max(max(c) for _, c in pairs) < VOCAB


def test_rolling_windows_span_several_contexts(llama3_dir):
    """The WikiText pages are longer than max_length: the parity above covers the window logic."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama3_dir)
    assert all(len(tok(r["page"])["input_ids"]) > MAX_LENGTH + 1 for r in WIKI)


def test_eval_task_puts_lm_eval_results_in_results_json(llama3_dir, tasks_dir, hf_results, tmp_path):
    """task=eval with eval.lm_eval_tasks (Python API inside pojax.main): lm-eval's metrics in
    results.json, equal to lm-eval's hf model's."""
    from pojax.train.tasks import run_eval
    from tests.train.helpers import quick_config

    config = quick_config(**{"task": "eval", "model.path": llama3_dir, "data.format": "paired",
                             "eval.lm_eval_tasks": "tiny_arc", "eval.lm_eval_include_path": tasks_dir, "eval.lm_eval_max_length": MAX_LENGTH,
                             "eval.lm_eval_include_defaults": False, "train.batch_size": 4})
    results = run_eval(config, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["lm_eval/tiny_arc/acc"] == results["lm_eval/tiny_arc/acc"]
    assert saved["lm_eval/tiny_arc/acc"] == pytest.approx(hf_results["results"]["tiny_arc"]["acc,none"])
    assert saved["lm_eval/tiny_arc/acc_norm"] == pytest.approx(hf_results["results"]["tiny_arc"]["acc_norm,none"])
    assert (tmp_path / "lm_eval_results.json").exists()


def test_unknown_task_is_lm_evals_error_with_the_task_name(llama3_dir, tasks_dir, tmp_path):
    from pojax.config import ConfigError
    from pojax.train.tasks import run_eval
    from tests.train.helpers import quick_config

    config = quick_config(**{"task": "eval", "model.path": llama3_dir, "data.format": "paired",
                             "eval.lm_eval_tasks": "tiny_arc,no_such_task", "eval.lm_eval_include_path": tasks_dir, "eval.lm_eval_include_defaults": False})
    with pytest.raises(ConfigError, match="eval.lm_eval_tasks.*no_such_task"):
        run_eval(config, str(tmp_path))


def test_missing_lm_eval_is_one_config_error_with_the_install_command(monkeypatch):
    """pojax.main calls this check with the other start-up checks, before any model is built."""
    import importlib.util

    from pojax import preflight
    from pojax.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^config key eval.lm_eval_tasks: needs lm-evaluation-harness: "
                                          r"pip install -e '.\[eval\]'"):
        preflight.check_lm_eval()


# ---------------------------------------------------------------------------- masked-diffusion LMs


@pytest.fixture(scope="module")
def golden_llada():
    from pojax.models import from_pretrained
    from tests.models.llada_fixtures import GOLDEN_CKPT, read_checkpoint

    config, tensors = read_checkpoint()
    return from_pretrained(GOLDEN_CKPT), config, tensors


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _masked_logps(config, tensors, tokens, masked, mask_id, cfg=0.0, prompt_len=0):
    """log p(tokens[i] | tokens with ``masked`` replaced by [MASK]) at each masked i (numpy float64)."""
    from tests.models.llada_fixtures import numpy_forward

    noisy = np.array(tokens)
    noisy[list(masked)] = mask_id
    logits = numpy_forward(config, tensors, noisy[None])[0]
    if cfg:
        un = noisy.copy()
        un[:prompt_len] = mask_id
        un_logits = numpy_forward(config, tensors, un[None])[0]
        logits = un_logits + (cfg + 1) * (logits - un_logits)
    lp = _log_softmax(logits)
    return [lp[i, tokens[i]] for i in masked]


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_one_token_continuation_is_exact(golden_llada, cfg):
    """Every draw masks the single continuation token with weight 1: the estimate is
    log p(token | context, [MASK]) exactly, with or without guidance."""
    from pojax.eval.lm_eval import diffusion_loglikelihood

    model, config, tensors = golden_llada
    mask = config["mask_token_id"]
    context, continuation = [5, 17, 42, 3, 99], [61]
    ours = diffusion_loglikelihood(model, context, continuation, mask_id=mask, mc_num=8, mc_batch_size=4,
                                   cfg_scale=cfg)
    (exact,) = _masked_logps(config, tensors, context + continuation, [len(context)], mask, cfg, len(context))
    assert ours == pytest.approx(exact, abs=2e-5)


def test_longer_continuation_agrees_with_the_enumerated_elbo(golden_llada):
    r"""ELBO = Σ_l (1/l) E_{|A|=l} Σ_{i∈A} log p(x_i | x_A masked), enumerated over every mask set A
    of a 3-token continuation; independent estimates (seeds) scatter around it."""
    from pojax.eval.lm_eval import diffusion_loglikelihood

    model, config, tensors = golden_llada
    mask = config["mask_token_id"]
    context, continuation = [7, 8, 9, 10], [20, 30, 40]
    tokens, n = context + continuation, len(continuation)
    positions = range(len(context), len(tokens))
    exact = 0.0
    for size in range(1, n + 1):
        sets = list(itertools.combinations(positions, size))
        exact += np.mean([sum(_masked_logps(config, tensors, tokens, a, mask)) for a in sets]) / size
    estimates = [diffusion_loglikelihood(model, context, continuation, mask_id=mask, mc_num=16, mc_batch_size=16,
                                         seed=s) for s in range(12)]
    mean, se = np.mean(estimates), np.std(estimates, ddof=1) / math.sqrt(len(estimates))
    assert np.std(estimates) > 0  # draws differ across seeds
    assert abs(mean - exact) < 4 * se + 1e-4, (mean, exact, se)


def _stub_lm(words, **kw):
    from pojax.eval.lm_eval import PojaxLM
    from tests.eval.diffusion_fixtures import WordStub, tokenizer

    return PojaxLM(model=WordStub(words), tokenizer=tokenizer(), batch_size=2, **kw)


def _instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_diffusion_generate_until_cuts_the_generation_at_until():
    """The stub generates 'the sky is blue grey' after any prompt; lm-eval's until strings cut it."""
    lm = _stub_lm(["the", "sky", "is", "blue", "grey"], gen_length=5, steps=5)
    out = lm.generate_until(_instances("generate_until", [
        ("what is the sky color", {"until": ["blue"], "max_gen_toks": 5}),
        ("what color", {"until": ["Question:"], "max_gen_toks": 5})]))
    assert out[0].split() == ["the", "sky", "is"]
    assert out[1].split() == ["the", "sky", "is", "blue", "grey"]


def test_diffusion_check_greedy_is_llada_suffix_greedy_prediction():
    """is_greedy is True exactly for the continuation the stub decodes greedily (check_greedy),
    and always False without the check (LLaDA's scripts' setting)."""
    words = ["blue", "grey"]
    reqs = [("what is the sky color", " blue grey"), ("what is the sky color", " grey blue")]
    checked = _stub_lm(words, check_greedy=True, mc_num=4, mc_batch_size=4).loglikelihood(
        _instances("loglikelihood", reqs))
    assert [g for _, g in checked] == [True, False]
    unchecked = _stub_lm(words, mc_num=4, mc_batch_size=4).loglikelihood(_instances("loglikelihood", reqs))
    assert [g for _, g in unchecked] == [False, False]
    assert all(math.isfinite(ll) for ll, _ in checked + unchecked)


def test_bad_model_args_raise_clear_errors():
    from pojax.eval.lm_eval import PojaxLM, parse_mesh

    with pytest.raises(ValueError, match="needs path="):
        PojaxLM()
    with pytest.raises(ValueError, match="mesh='2x2'"):
        parse_mesh("2x2")
    assert parse_mesh("1x-1x1") == (1, -1, 1) and parse_mesh("") is None
    with pytest.raises(ValueError, match="mc_num .* multiple of mc_batch_size"):
        _stub_lm(["blue"], mc_num=10, mc_batch_size=4)
