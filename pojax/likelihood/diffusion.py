r"""Masked-diffusion LMs (LLaDA): the forward masking process, training losses and ELBO estimators.

A masked diffusion model scores a response :math:`r` (length L) to a prompt :math:`p` through
the conditionals :math:`\log p_\theta(r^i \mid p, r_A)` of masked tokens given a partly masked
response (``r_A``: the tokens of the set A replaced by the mask token). Its evidence lower bound
(LLaDA, arXiv 2502.09992, Sec. 2; the conditional form is the SFT one)

.. math:: \log p_\theta(r \mid p) \ge \mathcal{B}(r \mid p)
          = \mathbb{E}_{t \sim U(0,1)}\, \mathbb{E}_{A \sim q_t}
            \Big[\tfrac{1}{t} \sum_{i \in A} \log p_\theta(r^i \mid p, r_A)\Big]
          = \sum_{l=1}^{L} \tfrac{1}{l}\,\mathbb{E}_{|A| = l}
            \Big[\sum_{i \in A} \log p_\theta(r^i \mid p, r_A)\Big]

where :math:`q_t` masks each response token independently with probability t, and the second,
lower-variance form (the one LLaDA evaluates likelihoods with) draws l uniformly in 1..L, then A uniformly among the l-subsets,
with weight L / l. Both forms are the same number (∫₀¹ t^{l-1}(1-t)^{L-l} dt = 1/(l·C(L, l))).

Estimators (``estimator=``), all on the SUM scale (comparable to Σ_t log π of an AR model), each
an average of ``n_mc`` = M masked copies of every row, folded into one forward of B·M rows:

``"timestep"``          t_j iid U(0,1), p_j = (1-ε) t_j + ε, every response token masked with
                        probability p_j, weight 1/p_j. VRPO's estimator with its optimal allocation
                        (one mask per timestep; LLaDA 1.5, arXiv 2505.19223). Unbiased for
                        the ε-clipped bound (1/(1-ε)) ∫_ε^1 …/p dp, which differs from 𝓑 by O(ε);
                        with ε = 0 its variance is infinite (one masked token at t → 0 weighs 1/t).
``"timestep_stratified"`` t_j = (j + u)/M with one u ~ U(0,1) per row: each t_j is still uniform
                        (unbiased as above), the M timesteps cover [0, 1) evenly.
``"length"``            l_j iid uniform in 1..L, exactly l_j tokens masked (uniformly without
                        replacement), weight L/l_j. Unbiased for 𝓑; finite variance. The
                        ELBO-KTO authors' draws (``l_from_seed`` in their precompute_bref.py:
                        one l per draw from a per-example hash; same law, other masks).
``"length_stratified"`` (default) l_j = ((k - 1 + ⌊j L / M⌋) mod L) + 1 with one k uniform in
                        1..L per row: the M lengths are spread evenly over 1..L
                        (``get_log_likelihood.py`` of LLaDA). Departure: LLaDA rounds
                        k + j L / M with ``torch.round`` (half to even), which maps two k to one
                        l_j when j L / M is a half-integer and biases the estimate; ⌊·⌋ keeps
                        k ↦ l_j a bijection, so every l_j is uniform and the estimate unbiased.

Shared draws (VRPO's "antithetic sampling"): the draws depend only on the key and the
response positions, never on the model, so ``elbo(policy, …, key)`` and ``elbo(ref, …, key)``
use the same timesteps and masks; or build them once with ``make_draws`` and pass ``draws=``.
Then the noise cancels in policy − reference (tests/likelihood/test_diffusion.py measures it).

Positions: ``prompt_mask`` marks the prompt (never masked, never scored). ``response_mask``
(default: everything that is not prompt) marks the response; positions in neither are padding:
never masked, never scored, but still model inputs (pass ``segment_ids`` to hide them from
attention). LLaDA's SFT pads responses with EOS and trains on that padding: leave
``response_mask`` at its default for that convention.

All log-probs come from ``token_logps_from_hidden`` (chunked over the sequence under
``jax.checkpoint``; [B·M, T, V] logits never exist at once) and all estimator math is float32.
Models are duck-typed: anything with ``hidden_states(input_ids [B, T], *, positions,
segment_ids) -> [B, T, D]`` and ``lm_head_weight() -> [D, V]`` (bidirectional for LLaDA).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pojax.likelihood.autoregressive import token_logps_from_hidden

ESTIMATORS = ("timestep", "timestep_stratified", "length", "length_stratified")
DEFAULT_EPS = 1e-3  # LLaDA's ε: p_mask = (1 - ε) t + ε keeps the 1/p weight ≤ 1000


@struct.dataclass
class MaskDraws:
    """M Monte Carlo draws of the forward process for each of B rows (a pytree).

    Attributes:
      mask: [B, M, T] bool, True where draw m replaces the token of row b by the mask token.
        Always inside the response positions.
      weight: [B, M] float32 importance weight of each draw (1/p for timesteps, L/l for lengths).
    """

    mask: jax.Array
    weight: jax.Array

    @property
    def n_mc(self) -> int:
        return self.mask.shape[1]


# ---------------------------------------------------------------------------- forward process


def sample_p_mask(key, batch: int, *, eps: float = DEFAULT_EPS):
    """p = (1 - ε) t + ε with t ~ U(0, 1): LLaDA's masking probability per row. [B] float32."""
    t = jax.random.uniform(key, (batch,), jnp.float32)
    return (1.0 - eps) * t + eps


def mask_tokens(tokens_BT, p_mask, key, mask_id: int, maskable_BT=None):
    """The forward process q_t: each maskable token becomes ``mask_id`` with probability p_mask.

    Args:
      tokens_BT: [B, T] int token ids.
      p_mask: masking probability, broadcastable to [B, T] ([B, 1], [B, T] or a scalar; a [B]
        vector is taken per row).
      key: PRNG key.
      mask_id: the mask token id.
      maskable_BT: optional [B, T] bool, True where masking is allowed (e.g. not the prompt).

    Returns:
      (noisy [B, T] tokens' dtype, masked [B, T] bool).
    """
    p_mask = jnp.asarray(p_mask, jnp.float32)
    if p_mask.ndim == 1:
        p_mask = p_mask[:, None]
    masked = jax.random.uniform(key, tokens_BT.shape, jnp.float32) < p_mask
    if maskable_BT is not None:
        masked &= jnp.asarray(maskable_BT, bool)
    return jnp.where(masked, jnp.asarray(mask_id, tokens_BT.dtype), tokens_BT), masked


# ---------------------------------------------------------------------------- input checks


def _check_n_mc(n_mc) -> int:
    if isinstance(n_mc, bool) or not isinstance(n_mc, (int, np.integer)) or n_mc < 1:
        raise ValueError(f"n_mc must be an int >= 1, got {n_mc!r}")
    return int(n_mc)


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_tokens(tokens_BT, *masks):
    if tokens_BT.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens_BT.shape}")
    for name, m in masks:
        if m is not None and m.shape != tokens_BT.shape:
            raise ValueError(f"{name} must have the shape of tokens {tokens_BT.shape}, got {m.shape}")


def response_positions(prompt_mask_BT, response_mask_BT=None):
    """[B, T] bool: the scored (maskable) positions, ~prompt_mask & response_mask.

    Raises ValueError (when the masks are concrete, i.e. outside jit) if a row has none: the
    prompt covers the whole sequence or the response mask is empty. Under jit such a row
    scores 0 instead (the empty response has log-likelihood 0).
    """
    resp = ~jnp.asarray(prompt_mask_BT, bool)
    if response_mask_BT is not None:
        resp &= jnp.asarray(response_mask_BT, bool)
    if _concrete(resp):
        empty = np.flatnonzero(~np.asarray(resp).any(axis=-1)).tolist()
        if empty:
            raise ValueError(
                f"rows {empty} have no response tokens: prompt_mask covers the whole sequence "
                "(or response_mask is empty there); the ELBO needs at least one response token")
    return resp


# ---------------------------------------------------------------------------- draws


def make_draws(key, response_BT, *, n_mc: int, estimator: str = "length_stratified",
               eps: float = DEFAULT_EPS) -> MaskDraws:
    """Draws n_mc (mask, weight) pairs per row over the response positions.

    Deterministic in (key, response positions, n_mc, estimator, eps): policy and reference
    given the same key get the same draws. See the module docstring for the estimators.

    Args:
      key: PRNG key.
      response_BT: [B, T] bool, the maskable response positions (``response_positions``).
      n_mc: M ≥ 1 draws per row (static).
      estimator: one of ``ESTIMATORS``.
      eps: ε of the timestep estimators (p = (1-ε) t + ε); unused by the length ones.

    Returns:
      MaskDraws with mask [B, M, T] bool and weight [B, M] float32.
    """
    n_mc = _check_n_mc(n_mc)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    response_BT = jnp.asarray(response_BT, bool)
    b, t = response_BT.shape
    m = n_mc
    k_level, k_pos = jax.random.split(key)
    u_BMT = jax.random.uniform(k_pos, (b, m, t), jnp.float32)
    resp_B1T = response_BT[:, None, :]

    if estimator.startswith("timestep"):
        if estimator == "timestep":
            t_BM = jax.random.uniform(k_level, (b, m), jnp.float32)
        else:
            offset_B1 = jax.random.uniform(k_level, (b, 1), jnp.float32)
            t_BM = (jnp.arange(m, dtype=jnp.float32) + offset_B1) / m
        p_BM = (1.0 - eps) * t_BM + eps
        mask = (u_BMT < p_BM[..., None]) & resp_B1T
        # p = 0 (only with ε = 0 and t = 0 exactly) masks nothing: weight 0, not 0·∞.
        weight = jnp.where(p_BM > 0, 1.0 / jnp.where(p_BM > 0, p_BM, 1.0), 0.0)
        return MaskDraws(mask=mask, weight=weight.astype(jnp.float32))

    n_B1 = jnp.sum(response_BT, axis=-1, dtype=jnp.int32)[:, None]
    n_safe = jnp.maximum(n_B1, 1)  # a row without response tokens masks nothing (weight 0)
    if estimator == "length":
        l_BM = jax.random.randint(k_level, (b, m), 1, n_safe + 1, dtype=jnp.int32)
    else:
        k_B1 = jax.random.randint(k_level, (b, 1), 1, n_safe + 1, dtype=jnp.int32)
        # Integer ⌊j L / M⌋ (exact); k ↦ l_j is a bijection of 1..L for every j.
        l_BM = (k_B1 - 1 + (jnp.arange(m, dtype=jnp.int32) * n_safe) // m) % n_safe + 1
    # A uniform l-subset of the response: the l smallest of iid uniform scores. Non-response
    # positions score 2 > any uniform, so the response positions take ranks 0..L-1.
    scores = jnp.where(resp_B1T, u_BMT, 2.0)
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    mask = (ranks < l_BM[..., None]) & resp_B1T
    weight = jnp.where(n_B1 > 0, n_B1.astype(jnp.float32) / l_BM.astype(jnp.float32), 0.0)
    return MaskDraws(mask=mask, weight=weight)


# ---------------------------------------------------------------------------- ELBO


def _masked_token_logps(model, tokens_BT, mask_NT, *, mask_id, chunk_size, positions_NT,
                        segment_ids_NT, logit_soft_cap):
    """log p(tokens | noisy) [N, T] float32 where noisy = tokens with ``mask_NT`` masked."""
    noisy = jnp.where(mask_NT, jnp.asarray(mask_id, tokens_BT.dtype), tokens_BT)
    hidden = model.hidden_states(noisy, positions=positions_NT, segment_ids=segment_ids_NT)
    w_DV = model.lm_head_weight().astype(hidden.dtype)
    return token_logps_from_hidden(hidden, w_DV, tokens_BT, chunk_size=chunk_size,
                                   logit_soft_cap=logit_soft_cap)


def _fold(x_BT, m: int):
    """[B, T] -> [B·M, T], row b·M + j = x[b] (the order of reshape([B, M, T] -> [B·M, T]))."""
    return None if x_BT is None else jnp.repeat(x_BT, m, axis=0)


def elbo_per_draw(model, tokens_BT, draws: MaskDraws, *, mask_id: int, chunk_size: int = 1024,
                  positions=None, segment_ids=None, logit_soft_cap: float | None = None):
    r"""Each draw's estimate :math:`w_{b,j} \sum_{i \in A_{b,j}} \log p_\theta(x_{b,i} \mid x_{b, A_{b,j}})`.

    One forward of the B·M masked copies (draw j of row b is row b·M + j of the folded batch).

    Args:
      model: a bidirectional mask predictor (``hidden_states``, ``lm_head_weight``).
      tokens_BT: [B, T] int clean tokens (prompt + response + padding).
      draws: MaskDraws with mask [B, M, T], weight [B, M].
      mask_id: the mask token id.
      chunk_size: sequence positions per log-softmax chunk (memory ∝ B·M·C·V).
      positions, segment_ids: optional [B, T], repeated for the M copies and passed to the model.
      logit_soft_cap: as in ``token_logps_from_hidden``.

    Returns:
      [B, M] float32.
    """
    b, t = tokens_BT.shape
    m = draws.mask.shape[1]
    if draws.mask.shape != (b, m, t) or draws.weight.shape != (b, m):
        raise ValueError(f"draws have mask {draws.mask.shape} and weight {draws.weight.shape}; "
                         f"tokens {tokens_BT.shape} need [B, M, T] = [{b}, M, {t}] and [{b}, M]")
    mask_NT = draws.mask.reshape(b * m, t)
    logps_NT = _masked_token_logps(model, _fold(tokens_BT, m), mask_NT, mask_id=mask_id,
                                   chunk_size=chunk_size, positions_NT=_fold(positions, m),
                                   segment_ids_NT=_fold(segment_ids, m), logit_soft_cap=logit_soft_cap)
    # `where`, not a product: an unmasked position's log-prob may be -inf (e.g. a padded target).
    summed_BM = jnp.sum(jnp.where(mask_NT, logps_NT, 0.0), axis=-1).reshape(b, m)
    return summed_BM * draws.weight.astype(jnp.float32)


def elbo(model, tokens_BT, prompt_mask_BT, key, *, n_mc: int, mask_id: int,
         estimator: str = "length_stratified", response_mask=None, draws: MaskDraws | None = None,
         eps: float = DEFAULT_EPS, chunk_size: int = 1024, positions=None, segment_ids=None,
         logit_soft_cap: float | None = None):
    r"""Monte Carlo ELBO of log p(response | prompt) per row, on the sum scale. [B] float32.

    .. math:: \hat{\mathcal{B}}_b = \frac{1}{M} \sum_{j=1}^{M} w_{b,j}
              \sum_{i \in A_{b,j}} \log p_\theta(x_{b,i} \mid x_{b,A_{b,j}})

    with the draws (A, w) of ``estimator`` (module docstring). Unbiased for the ELBO 𝓑 ≤ log p
    (the length estimators exactly; the timestep ones up to the O(ε) clipping).

    Args:
      model: a bidirectional mask predictor with ``hidden_states`` and ``lm_head_weight``.
      tokens_BT: [B, T] int prompt + response (+ padding) tokens.
      prompt_mask_BT: [B, T] bool, True on prompt tokens (never masked, never scored).
      key: PRNG key of the draws; None only when ``draws`` is given. Policy and reference
        called with the same key (and the same masks) share their draws exactly.
      n_mc: M ≥ 1 draws per row, folded into one forward of B·M rows.
      mask_id: the mask token id.
      estimator: "timestep" | "timestep_stratified" | "length" | "length_stratified".
      response_mask: optional [B, T] bool, True on real response tokens; default: every
        non-prompt position (LLaDA's EOS padding counts). Other positions are never masked.
      draws: optional MaskDraws from ``make_draws`` (then ``key`` is ignored and n_mc must match).
      eps: ε of the timestep estimators.
      chunk_size, positions, segment_ids, logit_soft_cap: as in ``elbo_per_draw``.

    Returns:
      [B] float32.

    Raises:
      ValueError: n_mc < 1, unknown estimator, mismatched shapes, ``n_mc`` ≠ the draws', no key
        and no draws, or (outside jit) a row without response tokens.

    References:
      Nie et al., Large Language Diffusion Models, arXiv 2502.09992 (Sec. 2; App. B.5: n_mc).
      Zhu et al., LLaDA 1.5: Variance-Reduced Preference Optimization, arXiv 2505.19223.
    """
    n_mc = _check_n_mc(n_mc)
    _check_tokens(tokens_BT, ("prompt_mask", prompt_mask_BT), ("response_mask", response_mask))
    if draws is None:
        if key is None:
            raise ValueError("elbo needs a PRNG key or explicit draws")
        resp = response_positions(prompt_mask_BT, response_mask)
        draws = make_draws(key, resp, n_mc=n_mc, estimator=estimator, eps=eps)
    elif draws.mask.shape[1] != n_mc:
        raise ValueError(f"n_mc={n_mc} but the draws hold {draws.mask.shape[1]} per row")
    per_draw = elbo_per_draw(model, tokens_BT, draws, mask_id=mask_id, chunk_size=chunk_size,
                             positions=positions, segment_ids=segment_ids, logit_soft_cap=logit_soft_cap)
    return jnp.mean(per_draw, axis=-1)


# ---------------------------------------------------------------------------- training losses


def _weighted_masked_nll(model, tokens_BT, maskable_BT, key, *, mask_id, eps, chunk_size,
                         positions, segment_ids, logit_soft_cap):
    """Σ_{masked i} -log p(x_i | x_t) / p_mask per row [B], for one LLaDA forward process draw."""
    k_t, k_mask = jax.random.split(key)
    p_B = sample_p_mask(k_t, tokens_BT.shape[0], eps=eps)
    _, masked = mask_tokens(tokens_BT, p_B, k_mask, mask_id, maskable_BT)
    logps = _masked_token_logps(model, tokens_BT, masked, mask_id=mask_id, chunk_size=chunk_size,
                                positions_NT=positions, segment_ids_NT=segment_ids,
                                logit_soft_cap=logit_soft_cap)
    return -jnp.sum(jnp.where(masked, logps, 0.0), axis=-1) / p_B


def sft_loss(model, tokens_BT, prompt_mask_BT, key, *, mask_id: int, eps: float = DEFAULT_EPS,
             chunk_size: int = 1024, positions=None, segment_ids=None,
             logit_soft_cap: float | None = None):
    r"""LLaDA's SFT loss per example, [B] float32; its batch mean is LLaDA's loss.

    .. math:: \ell_b = \frac{1}{L_b\, p_b} \sum_{i:\ \text{masked}} -\log p_\theta(x_{b,i} \mid x_{b,t}),
              \quad p_b = (1-\varepsilon) t_b + \varepsilon,\ t_b \sim U(0,1)

    Only non-prompt tokens are masked; L_b counts every non-prompt position, the EOS padding
    included (which is masked and trained on like any answer token), as in LLaDA's GUIDELINES.md
    (``ce_loss = Σ token_loss / answer_lengths / B``). L_b · ℓ_b is an unbiased estimate of
    minus the "timestep" ELBO of the answer.

    Args:
      model: the mask predictor. tokens_BT: [B, T] int. prompt_mask_BT: [B, T] bool.
      key: PRNG key (t and the mask). mask_id: the mask token id. eps: ε.
      chunk_size, positions, segment_ids, logit_soft_cap: as in ``elbo_per_draw``.

    Returns:
      [B] float32.

    Raises:
      ValueError: mismatched shapes, or (outside jit) a row whose prompt covers it entirely.
    """
    _check_tokens(tokens_BT, ("prompt_mask", prompt_mask_BT))
    answer_BT = response_positions(prompt_mask_BT)
    answer_len_B = jnp.maximum(jnp.sum(answer_BT, axis=-1), 1).astype(jnp.float32)
    nll_B = _weighted_masked_nll(model, tokens_BT, answer_BT, key, mask_id=mask_id, eps=eps,
                                 chunk_size=chunk_size, positions=positions,
                                 segment_ids=segment_ids, logit_soft_cap=logit_soft_cap)
    return nll_B / answer_len_B


def pretrain_loss(model, tokens_BT, key, *, mask_id: int, eps: float = DEFAULT_EPS, maskable=None,
                  chunk_size: int = 1024, positions=None, segment_ids=None,
                  logit_soft_cap: float | None = None):
    r"""LLaDA's pre-training loss per example, [B] float32; its batch mean is LLaDA's loss.

    .. math:: \ell_b = \frac{1}{T\, p_b} \sum_{i:\ \text{masked}} -\log p_\theta(x_{b,i} \mid x_{b,t})

    Every token may be masked (or those of ``maskable``, e.g. to spare packing padding); the
    normalizer is the row length T whatever is masked (GUIDELINES.md: ``/ (b · l)``). LLaDA's
    1% of rows cut to a random length is a data-pipeline choice and is not done here.

    Args:
      model, key, mask_id, eps, chunk_size, positions, segment_ids, logit_soft_cap: as in
        ``sft_loss``. tokens_BT: [B, T] int. maskable: optional [B, T] bool.

    Returns:
      [B] float32.
    """
    _check_tokens(tokens_BT, ("maskable", maskable))
    nll_B = _weighted_masked_nll(model, tokens_BT, maskable, key, mask_id=mask_id, eps=eps,
                                 chunk_size=chunk_size, positions=positions,
                                 segment_ids=segment_ids, logit_soft_cap=logit_soft_cap)
    return nll_B / tokens_BT.shape[1]
