"""The paper-scale recipes of configs/ (8B models on TPU VMs), each run for 2 steps on a tiny
random model of the same family (Llama, Mistral, Qwen3, Gemma 2) saved in the Hugging Face layout, with a
few rows of the dataset in its real upstream layout (UltraFeedback-binarized parquet, kto-mix
parquet, HH-RLHF gzipped transcripts). Only sizes shrink; loss, reference, scan, remat, dtype,
mesh and schedule stay the recipe's."""
import glob
import math
import os
import re

import numpy as np
import pytest
import torch
from transformers import (AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

from pojax.config import validate
from pojax.train.run import run_train
from tests.data.test_builders import hh, msg, uf_row, write_jsonl, write_parquet
from tests.data.tokenizer_fixture import WORDS, make_tokenizer
from tests.train.helpers import ROOT, read_jsonl, recipe

CONTENT = WORDS[8:]  # the plain words the word-level tokenizer knows (no specials, roles, ":" or "\n")
HH_MARKERS = ["Human:", "Assistant:"]  # HH transcripts are read raw (data.chat_template = "no")

PAPER_RECIPES = {  # recipe -> (HF config class, HF model class, extra config of the tiny model)
    "llama3_8b_dpo_ultrafeedback": (LlamaConfig, LlamaForCausalLM, {}),
    "llama3_8b_simpo_ultrafeedback": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral_7b_kto_mix": (MistralConfig, MistralForCausalLM, {"sliding_window": 12}),
    "qwen3_dpo_hh_rlhf": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
    # soft caps small enough to bite at this size; layer 0 slides over 12 tokens, layer 1 is global
    "gemma2_9b_dpo_ultrafeedback": (Gemma2Config, Gemma2ForCausalLM, {"head_dim": 8, "query_pre_attn_scalar": 8,
                                                                      "sliding_window": 12, "attn_logit_softcapping": 2.0,
                                                                      "final_logit_softcapping": 3.0}),
    # 4 experts, top-2, renormalized as Qwen3-30B-A3B's router
    "qwen3_30b_a3b_dpo_ultrafeedback": (Qwen3MoeConfig, Qwen3MoeForCausalLM, {
        "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24, "norm_topk_prob": True}),
}
SMALL = {"train.max_steps": 2, "train.batch_size": 8, "train.grad_accum_steps": 1, "data.max_prompt_length": 16,
         "data.max_completion_length": 8, "likelihood.chunk_size": 8, "eval.num_examples": 8,
         "logging.progress": False, "logging.plots": False}


def words(rng, n):
    return " ".join(rng.choice(CONTENT, n))


def tiny_model(path, name, seed=0) -> int:
    """A random 2-layer model of the recipe's family plus the word-level tokenizer; the vocab size."""
    config_cls, model_cls, extra = PAPER_RECIPES[name]
    tokenizer = make_tokenizer()
    if name == "qwen3_dpo_hh_rlhf":
        tokenizer.add_tokens(HH_MARKERS)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
    model_cls(config).save_pretrained(path)
    return len(tokenizer)


def ultrafeedback_dir(root, identical_pairs=False):
    """data/{train,test}_prefs parquet files; ``identical_pairs``: every training pair has
    chosen == rejected (the SimPO limit below)."""
    rng = np.random.default_rng(0)

    def row(i, identical=False):
        good = words(rng, 2)
        return uf_row(i, words(rng, 3), good, good if identical else words(rng, 3), 8.0, 3.5)

    write_parquet(str(root / "data/train_prefs-00000-of-00001.parquet"), [row(i, identical_pairs) for i in range(24)])
    write_parquet(str(root / "data/test_prefs-00000-of-00001.parquet"), [row(24 + i) for i in range(8)])  # pairs differ
    write_parquet(str(root / "data/train_sft-00000-of-00001.parquet"), [row(99)])  # other upstream splits: not read
    return root


def kto_mix_dir(root):
    rng = np.random.default_rng(1)

    def rows(n):
        return [{"prompt": [msg("user", words(rng, 3))], "completion": [msg("assistant", words(rng, 2))],
                 "label": bool(i % 2)} for i in range(n)]

    write_parquet(str(root / "data/train-00000-of-00001.parquet"), rows(24))
    write_parquet(str(root / "data/test-00000-of-00001.parquet"), rows(8))
    return root


def hh_rlhf_dir(root):
    """Gzipped transcripts per subset; every fourth dialogue has earlier turns."""
    rng = np.random.default_rng(2)

    def rows(n):
        out = []
        for i in range(n):
            turns = [words(rng, 3)] if i % 4 else [words(rng, 2), words(rng, 2), words(rng, 3)]
            out.append({"chosen": hh(turns, words(rng, 2)), "rejected": hh(turns, words(rng, 3))})
        return out

    for subset, n_train in (("harmless-base", 8), ("helpful-base", 16)):
        write_jsonl(str(root / subset / "train.jsonl.gz"), rows(n_train), gz=True)
        write_jsonl(str(root / subset / "test.jsonl.gz"), rows(4), gz=True)
    return root


def simpo_limit(config) -> float:
    """SimPO with y_w = y_l: -log σ(β·0 - γ) = softplus(γ), whatever the model."""
    return math.log1p(math.exp(config.loss.simpo_gamma))


CASES = {  # recipe -> (upstream layout writer, overrides beyond SMALL, first loss at the start)
    "llama3_8b_dpo_ultrafeedback": (ultrafeedback_dir, {"train.batch_size": 16, "train.grad_accum_steps": 2},
                                    lambda c: math.log(2)),  # policy == reference
    "llama3_8b_simpo_ultrafeedback": (lambda root: ultrafeedback_dir(root, identical_pairs=True), {}, simpo_limit),
    "mistral_7b_kto_mix": (kto_mix_dir, {}, lambda c: 0.5),  # r = z0 = 0: λ (1 - σ(0)) with λ_D = λ_U = 1
    "qwen3_dpo_hh_rlhf": (hh_rlhf_dir, {"train.sft_steps": 2}, lambda c: math.log(2)),  # reference = the SFT'd policy
    "gemma2_9b_dpo_ultrafeedback": (ultrafeedback_dir, {}, lambda c: math.log(2)),  # policy == reference
    # policy == reference: log 2, plus 0.001 × the router's load-balancing loss (checked below)
    "qwen3_30b_a3b_dpo_ultrafeedback": (ultrafeedback_dir, {}, lambda c: math.log(2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_paper_recipe_two_steps_on_tiny_model_of_its_family(tmp_path, name):
    write, overrides, first_loss = CASES[name]
    vocab = tiny_model(tmp_path / "model", name)
    data = write(tmp_path / "data")
    config = recipe(name, **{**SMALL, **overrides, "model.path": str(tmp_path / "model"), "data.path": str(data),
                             "data.tfds_dir": str(tmp_path / "tfds")})
    validate(config)
    assert config.model.scan_layers and config.model.remat == "full" and config.model.dtype == "bfloat16"
    assert config.mesh.fsdp == -1 and config.checkpoint.best_metric == "eval_loss"
    workdir = tmp_path / "run"
    results = run_train(config, str(workdir))

    metrics = read_jsonl(workdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    aux = metrics[0].get("aux_loss", 0.0)  # mixtures of experts: the router's load-balancing loss
    assert (aux > 1.0) == ("a3b" in name)  # E·Σ f P ≥ top-k when routing is imbalanced (random router)
    np.testing.assert_allclose(metrics[0]["loss"] - (config.model.router_aux_loss_coef or 0.0) * aux,
                               first_loss(config), rtol=1e-5)
    if config.train.sft_steps:
        assert [m["step"] for m in read_jsonl(workdir / "metrics_sft.jsonl")] == [1, 2]
    assert results["eval_num_examples"] == 8 and math.isfinite(results["eval_loss"])
    assert os.listdir(workdir / "checkpoints" / "train_best")  # kept by checkpoint.best_metric = eval_loss

    # the trained policy is a checkpoint of the family's transformers class, with the tokenizer
    _, model_cls, _ = PAPER_RECIPES[name]
    final = workdir / "final"
    hf = model_cls.from_pretrained(final).eval()
    assert type(hf) is model_cls and len(AutoTokenizer.from_pretrained(final)) == vocab
    with torch.no_grad():
        logits = hf(torch.arange(10).reshape(1, 10) % vocab).logits
    assert logits.shape == (1, 10, vocab) and torch.isfinite(logits).all()


DIFFUSION_CASES = {  # LLaDA recipes -> (upstream layout writer, first loss at policy == reference)
    "elbo_kto": (kto_mix_dir, 0.5),  # r̂ = z0 = 0 exactly (shared draws): λ (1 - σ(0))
    "vrpo": (ultrafeedback_dir, math.log(2)),
}


def tiny_llada(path) -> int:
    """A random 2-layer LLaDA-layout checkpoint (pojax's export) plus the word-level tokenizer;
    the [MASK] token is one id past the tokenizer's vocabulary."""
    from flax import nnx

    from pojax.models import LLaDA, ModelConfig, save_pretrained

    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(path)
    mc = ModelConfig(model_type="llada", vocab_size=len(tokenizer) + 1, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, mask_token_id=len(tokenizer))
    save_pretrained(LLaDA(mc, rngs=nnx.Rngs(0)), str(path))
    return len(tokenizer) + 1


@pytest.mark.parametrize("name", sorted(DIFFUSION_CASES))
def test_diffusion_recipe_two_steps_on_tiny_llada(tmp_path, name):
    from pojax.models import LLaDA, from_pretrained

    write, first_loss = DIFFUSION_CASES[name]
    vocab = tiny_llada(tmp_path / "model")
    config = recipe(name, **{**SMALL, "model.path": str(tmp_path / "model"), "data.path": str(write(tmp_path / "data")),
                             "data.tfds_dir": str(tmp_path / "tfds"), "likelihood.n_mc": 2})
    validate(config)
    assert config.likelihood.kind == "diffusion" and config.model.scan_layers and config.model.remat == "full"
    results = run_train(config, str(tmp_path / "run"))
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    np.testing.assert_allclose(metrics[0]["loss"], first_loss, rtol=1e-5)
    assert math.isfinite(results["eval_loss"])
    final = from_pretrained(str(tmp_path / "run" / "final"))
    assert isinstance(final, LLaDA) and final.config.vocab_size == vocab


CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_parses_and_validates(path):
    name = os.path.basename(path)[:-3]
    config = recipe(name)
    validate(config)
    if name not in PAPER_RECIPES and name not in DIFFUSION_CASES:
        return
    with open(path) as f:
        text = f.read()
    doc = text.split('"""')[1]
    # the header gives the command, with the local paths to pass, and cites the paper
    for flag in (f"--config=configs/{name}.py", "--config.model.path=", "--config.data.path=", "--workdir="):
        assert flag in doc, flag
    assert re.search(r"arXiv \d{4}\.\d{5}", doc)
    # a comment on every field the recipe sets
    for line in text.splitlines():
        if re.match(r"\s*config\.\w+(\.\w+)* = ", line):
            assert "  # " in line, line
