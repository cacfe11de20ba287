"""LLaDA's reverse process: block-wise low-confidence (or random) remasking, jit-compiled.

The response starts as ``gen_length`` mask tokens after the prompt and is split into blocks of
``block_length`` filled left to right (semi-autoregressive when block_length < gen_length).
Each block gets steps / num_blocks denoising steps; at every step the mask predictor proposes a
token x0 for every masked position (argmax of the logits, Gumbel-perturbed when temperature > 0)
and the k most confident proposals inside the current block are kept, k following the linear
schedule: the block's n masked tokens split evenly over its steps, floor(n / steps) each, the
remainder one extra token each to the earliest steps (LLaDA, arXiv 2502.09992, Sec. 2.4;
``generate.py`` of ML-GSAI/LLaDA, which this module follows step for step).

Static shapes throughout: one ``lax.fori_loop`` over blocks around one over steps, top-k with a
per-row k done by ranking, no Python loop per step, one compilation per static configuration.
Each step holds the full [B, T, V] float32 logits (2B rows with guidance), as generate.py does,
plus a Gumbel-noise buffer of that size at temperature > 0.

Departures from ``generate.py`` (all documented where they happen):
  * Returns only the generated tokens [B, gen_length] (as ``pojax.sampling.generate``), not the
    prompt + generation.
  * Gumbel-max in log space: argmax(logits + temperature · g), g = -log(-log u), which has the
    argmax of LLaDA's exp(logits) / (-log u)^temperature without overflowing exp. Computed in
    float64 when ``jax_enable_x64`` is on (as LLaDA: low-precision Gumbel noise lowers quality,
    arXiv 2409.02908), float32 otherwise.
  * ``confidence_eos_eot_inf``: the confidence is the softmax with the EOS and EoT logits at
    -inf (so a position proposing EOS/EoT has confidence 0 and is unmasked last in its block).
    This is what generate.py computes at temperature 0; at temperature > 0 its in-place write
    lands on the noisy copy and only EoT is affected, which we take to be unintended.
  * Ties in confidence are broken towards the lower position (stable sort); torch.topk leaves
    them unspecified.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

REMASKING = ("low_confidence", "random")


def num_transfer_tokens(n_masked, steps: int):
    """Tokens to unmask at each of ``steps`` steps: floor(n / steps), +1 on the first n % steps.

    Args:
      n_masked: [B] int masked tokens per row at the start of a block.
      steps: steps of the block (static).

    Returns:
      [B, steps] int32, each row summing to n_masked.
    """
    n = jnp.asarray(n_masked, jnp.int32)[:, None]
    i = jnp.arange(steps, dtype=jnp.int32)
    return n // steps + (i < n % steps).astype(jnp.int32)


def _gumbel_argmax(logits_BTV, key, temperature: float):
    """argmax of the logits, Gumbel-perturbed at temperature > 0 (a sample of softmax(z / T))."""
    if temperature == 0.0:
        return jnp.argmax(logits_BTV, axis=-1).astype(jnp.int32)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    # minval > 0: -log(0) would give a +inf Gumbel draw that ties with any other.
    u = jax.random.uniform(key, logits_BTV.shape, dtype, minval=jnp.finfo(dtype).tiny)
    noisy = logits_BTV.astype(dtype) - temperature * jnp.log(-jnp.log(u))
    return jnp.argmax(noisy, axis=-1).astype(jnp.int32)


def _denoise(logits_of, prompts_BP, attention_mask_BP, key, *, gen_length, steps, block_length,
             temperature, cfg_scale, remasking, mask_id, eos_id, eot_id, logits_eos_inf,
             confidence_eos_eot_inf, return_trace):
    """The reverse process given ``logits_of(tokens [N, T], segment_ids [N, T] | None) -> [N, T, V]``."""
    b, p = prompts_BP.shape
    t = p + gen_length
    x = jnp.concatenate([prompts_BP.astype(jnp.int32), jnp.full((b, gen_length), mask_id, jnp.int32)], 1)
    seg = None
    if attention_mask_BP is not None:
        # Segment 0 hides left padding from attention (pojax models: keys of segment 0 are
        # never attended), like generate.py's attention_mask; positions stay 0..T-1.
        seg = jnp.concatenate([jnp.asarray(attention_mask_BP, jnp.int32),
                               jnp.ones((b, gen_length), jnp.int32)], 1)
    pos_T = jnp.arange(t, dtype=jnp.int32)
    # generate.py: prompt_index = (x != mask_id) before any step, i.e. the prompt (with its
    # padding) apart from mask tokens a prompt may hold; CFG masks exactly these.
    prompt_BT = (pos_T < p)[None, :] & (x != mask_id)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks

    def logits(x_BT):
        if cfg_scale > 0.0:
            un_x = jnp.where(prompt_BT, mask_id, x_BT)
            both = logits_of(jnp.concatenate([x_BT, un_x], 0),
                             None if seg is None else jnp.concatenate([seg, seg], 0))
            cond, un = jnp.split(both.astype(jnp.float32), 2, axis=0)
            return un + (cfg_scale + 1.0) * (cond - un)
        return logits_of(x_BT, seg).astype(jnp.float32)

    def step(blk, i, k_B, x, trace):
        s = blk * steps_per_block + i
        k_noise, k_rand = jax.random.split(jax.random.fold_in(key, s))
        masked_BT = x == mask_id
        z_BTV = logits(x)
        if logits_eos_inf:
            z_BTV = z_BTV.at[..., eos_id].set(-jnp.inf)
        x0_BT = _gumbel_argmax(z_BTV, k_noise, temperature)
        if remasking == "low_confidence":
            if confidence_eos_eot_inf:
                z_BTV = z_BTV.at[..., jnp.array([eos_id, eot_id])].set(-jnp.inf)
            # softmax(z)[x0] = exp(z[x0] - logsumexp z): no [B, T, V] probabilities.
            picked = jnp.take_along_axis(z_BTV, x0_BT[..., None], axis=-1)[..., 0]
            x0_p = jnp.exp(picked - jax.nn.logsumexp(z_BTV, axis=-1))
        else:
            x0_p = jax.random.uniform(k_rand, (b, t), jnp.float32)
        block_end = p + (blk + 1) * block_length
        x0_p = jnp.where(pos_T[None, :] >= block_end, -jnp.inf, x0_p)
        x0_BT = jnp.where(masked_BT, x0_BT, x)
        confidence = jnp.where(masked_BT, x0_p, -jnp.inf)
        # Top-k with a per-row k: rank every position by confidence (stable: ties to the left).
        order = jnp.argsort(-confidence, axis=-1, stable=True)
        ranks = jnp.argsort(order, axis=-1)
        transfer = ranks < k_B[:, None]
        return jnp.where(transfer, x0_BT, x), jnp.where(transfer, s, trace)

    def block_body(blk, carry):
        x, trace = carry
        start = p + blk * block_length
        in_block = (pos_T >= start) & (pos_T < start + block_length)
        k_BS = num_transfer_tokens(jnp.sum((x == mask_id) & in_block, axis=-1), steps_per_block)

        def step_body(i, carry):
            k_B = jax.lax.dynamic_index_in_dim(k_BS, i, axis=1, keepdims=False)
            return step(blk, i, k_B, *carry)

        return jax.lax.fori_loop(0, steps_per_block, step_body, (x, trace))

    trace = jnp.full((b, t), -1, jnp.int32)
    x, trace = jax.lax.fori_loop(0, num_blocks, block_body, (x, trace))
    if return_trace:
        return x[:, p:], trace[:, p:]
    return x[:, p:]


class _Config(NamedTuple):
    """The static (hashable) settings of one compiled sampler."""

    gen_length: int
    steps: int
    block_length: int
    temperature: float
    cfg_scale: float
    remasking: str
    mask_id: int
    eos_id: int | None
    eot_id: int | None
    logits_eos_inf: bool
    confidence_eos_eot_inf: bool
    return_trace: bool


@functools.partial(nnx.jit, static_argnames=("config",))
def _generate_model(model, prompts_BP, attention_mask_BP, key, config: _Config):
    def logits_of(x, seg):
        h = model.hidden_states(x, segment_ids=seg)
        w = model.lm_head_weight().astype(h.dtype)
        return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)

    return _denoise(logits_of, prompts_BP, attention_mask_BP, key, **config._asdict())


@functools.partial(jax.jit, static_argnames=("logits_fn", "config"))
def _generate_fn(logits_fn, prompts_BP, attention_mask_BP, key, config: _Config):
    def logits_of(x, seg):
        return logits_fn(x) if seg is None else logits_fn(x, segment_ids=seg)

    return _denoise(logits_of, prompts_BP, attention_mask_BP, key, **config._asdict())


def _left_padding_mask(prompts_BP, pad_id: int):
    """[B, P] bool, False on the leading run of pad_id of each row (left padding), else True."""
    return jnp.cumsum(prompts_BP != pad_id, axis=-1) > 0


def generate(model, prompts_BP, key, *, gen_length: int, steps: int, block_length: int | None = None,
             temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
             mask_id: int, pad_id: int | None = None, attention_mask=None, eos_id: int | None = None,
             eot_id: int | None = None, logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, return_trace: bool = False):
    """Samples ``gen_length`` tokens after each prompt with LLaDA's reverse process.

    Args:
      model: a mask predictor: an object with ``hidden_states(tokens, *, segment_ids)`` and
        ``lm_head_weight()`` (a pojax model; logits = h · W in float32), or a hashable callable
        ``logits_fn(tokens [N, T]) -> [N, T, V]``, called as ``logits_fn(tokens, segment_ids=…)``
        when the prompts are padded (a static argument: a new function object recompiles).
      prompts_BP: [B, P] int prompts, left-padded to a common length P.
      key: PRNG key (Gumbel noise and random remasking; unused at temperature 0 with
        low-confidence remasking).
      gen_length: tokens to generate; a multiple of ``block_length``.
      steps: total denoising steps; a multiple of gen_length / block_length (the number of blocks).
      block_length: tokens per block (default gen_length: a single block, no semi-AR).
      temperature: 0 = argmax; > 0 samples softmax(logits / temperature) by Gumbel-max.
      cfg_scale: w ≥ 0 of unsupervised classifier-free guidance, logits = un + (w + 1)(cond − un),
        the unconditional input having every prompt position replaced by mask_id (as generate.py).
      remasking: "low_confidence" (keep the proposals with the highest softmax probability of the
        un-noised logits) or "random" (keep random ones).
      mask_id: the mask token id (LLaDA: 126336).
      pad_id: id of the left padding; its leading run in each row is hidden from attention.
        Must differ from mask_id. Ignored when ``attention_mask`` is given.
      attention_mask: optional [B, P] bool/int, 1 on real prompt tokens (generate.py's).
      eos_id, eot_id: EOS and EoT ids (LLaDA-8B-Instruct: 126081, 126348), for the next two.
      logits_eos_inf: EOS logit at -inf (never proposed); LLaDA App. B.4.
      confidence_eos_eot_inf: EOS/EoT proposals get confidence 0 (unmasked last); App. B.4.
      return_trace: also return, per generated position, the global step (0..steps-1) at which
        it was unmasked.

    Returns:
      [B, gen_length] int32 tokens, or (tokens, steps [B, gen_length] int32) with return_trace.

    Raises:
      ValueError: gen_length not a multiple of block_length, steps not a multiple of the number
        of blocks, steps < 1, unknown remasking, negative temperature or cfg_scale, pad_id equal
        to mask_id, missing eos_id/eot_id for the EOS options.
    """
    block_length = gen_length if block_length is None else block_length
    if gen_length < 1 or block_length < 1:
        raise ValueError(f"gen_length ({gen_length}) and block_length ({block_length}) must be >= 1")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps < 1 or steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks "
                         f"gen_length / block_length = {num_blocks}")
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; known: {', '.join(REMASKING)}")
    if temperature < 0 or cfg_scale < 0:
        raise ValueError(f"temperature ({temperature}) and cfg_scale ({cfg_scale}) must be >= 0")
    if pad_id is not None and pad_id == mask_id:
        raise ValueError(f"pad_id must differ from mask_id ({mask_id}): padding would be generated over")
    if logits_eos_inf and eos_id is None:
        raise ValueError("logits_eos_inf needs eos_id")
    if confidence_eos_eot_inf and (eos_id is None or eot_id is None):
        raise ValueError("confidence_eos_eot_inf needs eos_id and eot_id")
    prompts_BP = jnp.asarray(prompts_BP, jnp.int32)
    if prompts_BP.ndim != 2:
        raise ValueError(f"prompts must be [B, P], got shape {prompts_BP.shape}")
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask, bool)
        if attention_mask.shape != prompts_BP.shape:
            raise ValueError(f"attention_mask {attention_mask.shape} must match prompts {prompts_BP.shape}")
    elif pad_id is not None:
        attention_mask = _left_padding_mask(prompts_BP, pad_id)
    config = _Config(gen_length, steps, block_length, float(temperature), float(cfg_scale), remasking,
                     int(mask_id), eos_id, eot_id, bool(logits_eos_inf), bool(confidence_eos_eot_inf),
                     bool(return_trace))
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head_weight"):
        return _generate_model(model, prompts_BP, attention_mask, key, config)
    return _generate_fn(model, prompts_BP, attention_mask, key, config)
