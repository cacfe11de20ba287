"""TGDPO's guide: token rewards of a DPO-trained model, computed once before training.

    r̂_t = β · (log π_guide(y_t | x, y_<t) − log π_ref(y_t | x, y_<t))

(Zhu et al., "TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct Preference
Optimization", arXiv 2506.14574: the token reward induced by a DPO-trained model, as RTO's
``pojax.losses.rto_token_rewards``), with β = loss.beta and π_ref the run's reference (the
starting policy). Both models are fixed during training, so the rewards are a column of the data:
chosen_token_rewards / rejected_token_rewards [N, T], aligned with the shifted targets of
``pojax.likelihood.autoregressive.shift_targets`` (position t rewards token t + 1), 0 off the
completion. No gradient flows through them.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pojax.config import ConfigError
from pojax.losses import rto_token_rewards
from pojax.models import CheckpointError, from_pretrained
from pojax.objectives import pair_logps

COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")


def guide_path(config) -> str:
    """reference.guide_path, required by tgdpo (there is no default guide)."""
    path = config.reference.get("guide_path", "")
    if not path:
        raise ConfigError("reference.guide_path", "loss 'tgdpo' needs a guide: the Hugging Face checkpoint dir of "
                          "a DPO-trained model with the policy's vocabulary (e.g. <dpo workdir>/final)")
    return path


def load_guide(config, vocab_size: int, mesh=None, rules=None):
    """The guide model of reference.guide_path, checked against the policy's vocabulary."""
    path = guide_path(config)
    try:
        guide = from_pretrained(path, dtype=jnp.dtype(config.model.dtype), mesh=mesh, rules=rules)
    except (CheckpointError, OSError, ValueError) as e:
        raise ConfigError("reference.guide_path", f"{path}: not a readable Hugging Face checkpoint ({e})") from None
    if getattr(guide.config, "mask_token_id", None) is not None:
        raise ConfigError("reference.guide_path", f"{path}: a masked-diffusion model; the guide must be a causal LM")
    if guide.config.vocab_size != vocab_size:
        raise ConfigError("reference.guide_path", f"{path}: vocabulary of {guide.config.vocab_size} tokens, the "
                          f"policy has {vocab_size}; the guide must share the policy's tokenizer")
    return guide


def guide_token_rewards(guide, reference, rows: dict, *, beta: float, batch_size: int, chunk_size: int) -> dict:
    """{chosen_token_rewards, rejected_token_rewards}: [N, T] float32 r̂_t of every paired row
    (module docstring), in batches of ``batch_size`` rows."""
    @nnx.jit
    def fn(g, r, b):
        lp = pair_logps(g, r, b, chunk_size=chunk_size)  # policy slot = guide, ref slot = reference
        return tuple(rto_token_rewards(t.policy, t.ref, t.mask, beta=beta) for t in (lp.chosen_tokens, lp.rejected_tokens))

    keys = ("chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask")
    n, outs = len(rows["chosen_ids"]), ([], [])
    for start in range(0, n, batch_size):
        b = {k: jnp.asarray(rows[k][start:start + batch_size]) for k in keys}
        for out, value in zip(outs, fn(guide, reference, b)):
            out.append(np.asarray(value, np.float32))
    return {k: np.concatenate(v) for k, v in zip(COLUMNS, outs)}


def with_guide_rewards(config, reference, vocab_size: int, splits: dict, *, batch_size: int, mesh=None,
                       rules=None) -> dict:
    """``splits`` ({name: paired rows or None}) with the guide's token rewards added to each."""
    guide = load_guide(config, vocab_size, mesh, rules)
    beta = config.loss.beta if config.loss.beta is not None else 0.1
    kw = {"beta": float(beta), "batch_size": batch_size, "chunk_size": config.likelihood.chunk_size}
    return {name: None if rows is None else dict(rows, **guide_token_rewards(guide, reference, rows, **kw))
            for name, rows in splits.items()}
