r"""Token- and step-level losses: TDPO, TGDPO, RTO's DPO stage and token rewards, Step-DPO.

They take ``PairLogps``; TDPO and TGDPO also read ``chosen_tokens`` / ``rejected_tokens``
(TokenLogps, [B, T]) with per-token inputs the trainer computes from full distributions or a
guide model, under fixed keys of ``TokenLogps.extra``:

  "token_kl"       [B, T] KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)) over the vocabulary (TDPO)
  "token_rewards"  [B, T] token rewards r̂_t of a guide model, e.g. β·log π_dpo(y_t|·)/π_ref(y_t|·) (TGDPO)

Metrics follow TRL (rewards β·u with u = log π(y|x) - log π_ref(y|x), without gradient).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses import terms
from pojax.losses.modifiers import cast_pair, pairwise_loss
from pojax.losses.pairwise import _logratios, _output, sigmoid
from pojax.losses.registry import register
from pojax.losses.types import LossOutput, PairLogps, TokenLogps

TOKEN_KL = "token_kl"
TOKEN_REWARDS = "token_rewards"


def _tokens(logps: PairLogps, name: str, need_ref: bool):
    ct, rt = logps.chosen_tokens, logps.rejected_tokens
    if ct is None or rt is None:
        raise ValueError(f"loss {name!r} needs PairLogps.chosen_tokens and rejected_tokens (per-token log-probs)")
    if need_ref and (ct.ref is None or rt.ref is None):
        raise ValueError(f"loss {name!r} needs the reference's per-token log-probs, but TokenLogps.ref is None")
    return ct, rt


def _masked_sum(x, tokens: TokenLogps):
    return jnp.sum(jnp.where(tokens.mask, terms.f32(x), 0.0), axis=-1)


def _extra(tokens: TokenLogps, key: str, name: str, side: str, what: str):
    if key not in tokens.extra:
        raise ValueError(f"loss {name!r} needs PairLogps.{side}_tokens.extra[{key!r}]: {what}")
    # Padded positions may hold anything: zero them before any arithmetic.
    return jnp.where(tokens.mask, terms.f32(tokens.extra[key]), 0.0)


@register("tdpo", tokens=True)
@pairwise_loss
def tdpo(logps: PairLogps, *, beta=0.1, tdpo_alpha=0.5) -> LossOutput:
    r"""TDPO2, token-level DPO (Zeng et al., arXiv 2404.11999): DPO with the difference of
    sequential forward KL divergences of the two completions,

    L = -log σ( β[(u_w - u_l) - α(D_l - sg(D_w))] ),
    D = D_SeqKL(x, y; π_ref ‖ π) = Σ_t KL(π_ref(·|x, y_<t) ‖ π(·|x, y_<t)),

    sg = stop-gradient, α = ``tdpo_alpha`` (0.5 as the authors' code). TDPO2 is the variant the
    paper recommends; TDPO1 is α = 1 without the stop-gradient. α = 0 is sigmoid DPO.
    The per-token KLs come in ``TokenLogps.extra["token_kl"]`` (they need both full next-token
    distributions, which only the trainer has) and must keep their gradient with respect to
    the policy: D_l is differentiated.

    Args:
      logps: PairLogps with ref_chosen / ref_rejected and chosen_tokens / rejected_tokens whose
        extra holds "token_kl" [B, T].
      beta: β. tdpo_alpha: α.
    Returns:
      LossOutput with loss [B] float32 and metrics kl/chosen, kl/rejected (D_w, D_l).
    """
    u_w, u_l = _logratios(logps, "tdpo")
    ct, rt = _tokens(logps, "tdpo", need_ref=False)
    what = "per-token KL(π_ref ‖ π) over the vocabulary"
    kl_w = jnp.sum(_extra(ct, TOKEN_KL, "tdpo", "chosen", what), axis=-1)
    kl_l = jnp.sum(_extra(rt, TOKEN_KL, "tdpo", "rejected", what), axis=-1)
    sg = jax.lax.stop_gradient
    z = (u_w - u_l) - tdpo_alpha * (kl_l - sg(kl_w))
    loss = -jax.nn.log_sigmoid(beta * z)
    return _output(loss, logps, beta, u_w, u_l, **{"kl/chosen": sg(kl_w), "kl/rejected": sg(kl_l)})


@register("tgdpo", tokens=True)
def tgdpo(logps: PairLogps, *, beta=0.1, tgdpo_alpha=0.5) -> LossOutput:
    r"""TGDPO, token-level reward guidance (Zhu et al., arXiv 2506.14574): DPO in which every
    token's log-ratio gets its own β, shaped by a guide model's token reward r̂_t,

    L = -log σ( Σ_t β(1 + α r̂^w_t) u^w_t - Σ_t β(1 - α r̂^l_t) u^l_t ),
    u_t = log π(y_t|x, y_<t) - log π_ref(y_t|x, y_<t),

    α = ``tgdpo_alpha`` (0.5 as the authors' code). The token rewards are runtime data without
    gradient in ``TokenLogps.extra["token_rewards"]``; the authors use a DPO-trained model,
    r̂_t = β·(log π_dpo(y_t|·) - log π_ref(y_t|·)) (see ``rto_token_rewards``). α = 0 is sigmoid DPO.

    Args:
      logps: PairLogps whose chosen_tokens / rejected_tokens carry ref and extra["token_rewards"].
      beta: β. tgdpo_alpha: α.
    Returns:
      LossOutput with loss [B] float32 and metrics tgdpo/token_reward_chosen, _rejected
      (mean r̂ per completion token).
    """
    logps = cast_pair(logps)
    ct, rt = _tokens(logps, "tgdpo", need_ref=True)
    what = "the guide model's token rewards r̂_t"
    rw = jax.lax.stop_gradient(_extra(ct, TOKEN_REWARDS, "tgdpo", "chosen", what))
    rl = jax.lax.stop_gradient(_extra(rt, TOKEN_REWARDS, "tgdpo", "rejected", what))
    uw_t = jnp.where(ct.mask, terms.f32(ct.policy) - terms.f32(ct.ref), 0.0)
    ul_t = jnp.where(rt.mask, terms.f32(rt.policy) - terms.f32(rt.ref), 0.0)
    z = beta * jnp.sum((1.0 + tgdpo_alpha * rw) * uw_t, -1) - beta * jnp.sum((1.0 - tgdpo_alpha * rl) * ul_t, -1)
    loss = -jax.nn.log_sigmoid(z)
    u_w, u_l = jnp.sum(uw_t, -1), jnp.sum(ul_t, -1)
    metrics = terms.pair_metrics(beta * u_w, beta * u_l, _masked_sum(ct.policy, ct), _masked_sum(rt.policy, rt))
    n_w = jnp.maximum(jnp.sum(ct.mask, -1), 1).astype(jnp.float32)
    n_l = jnp.maximum(jnp.sum(rt.mask, -1), 1).astype(jnp.float32)
    metrics["tgdpo/token_reward_chosen"] = jnp.sum(rw, -1) / n_w
    metrics["tgdpo/token_reward_rejected"] = jnp.sum(rl, -1) / n_l
    return LossOutput(loss=loss, metrics=metrics)


def rto_token_rewards(dpo_token_logps, ref_token_logps, mask, *, beta=0.1, rto_dpo_clip=0.0, policy_token_logps=None,
                      rto_kl_coef=0.0, sequence_reward=None, rto_seq_coef=0.0, rto_seq_mean=0.0, rto_seq_std=1.0,
                      rto_seq_clip=0.0):
    r"""RTO's token-wise reward (Zhong et al., "DPO Meets PPO: Reinforced Token Optimization",
    arXiv 2404.18922), shaped as the authors' code shapes it (zkshan2002/RTO, an OpenRLHF fork:
    ``NaiveExperienceMaker._compute_dpo_rewards`` and ``compute_reward``):

    r_t = clip(β₁ log π_dpo(y_t|x, y_<t)/π_ref(y_t|x, y_<t), −c₁, c₁) − β₂ log π(y_t|·)/π_ref(y_t|·)
          + 1[t = last] β₃ clip((r(x, y) − μ)/σ, −c₃, c₃),

    β₁ = ``beta``, c₁ = ``rto_dpo_clip`` (applied after the scaling, as the authors do; 0 = no
    clip), β₂ = ``rto_kl_coef`` (the k1 estimate of the per-token KL of the policy π being
    trained, when ``policy_token_logps`` is given), β₃ = ``rto_seq_coef`` times a sequence-level
    reward (e.g. a Bradley-Terry reward model), normalized by fixed μ = ``rto_seq_mean``, σ =
    ``rto_seq_std`` (the authors' ``--normalize_reward``: the reward model's score mean and std
    stored at the end of its training) and clamped to ±c₃ = ``rto_seq_clip`` (0 = no clamp; the
    authors hard-code 10) on the last completion token. The defaults here are the plain sum
    (no clip, no normalization); pojax.train.rto passes the authors' values (online.rto_* keys).

    Args:
      dpo_token_logps, ref_token_logps: [B, T] per-token log-probs of a DPO-trained model and
        of the reference.
      mask: [B, T] bool completion tokens (the last True of a row is the token the sequence
        reward lands on: the authors' EOS action, or the last token of a truncated completion).
      beta: β₁ > 0. rto_dpo_clip: c₁ >= 0.
      policy_token_logps: [B, T] of the policy being trained, or None (no KL term).
      rto_kl_coef: β₂ >= 0.
      sequence_reward: [B] raw scores, or None. rto_seq_coef: β₃. rto_seq_mean, rto_seq_std: μ,
        σ > 0. rto_seq_clip: c₃ >= 0.
    Returns:
      [B, T] float32 token rewards, 0 off the mask; no gradient.
    References: arXiv 2404.18922; github.com/zkshan2002/RTO (commit f2c1294).
    """
    mask = jnp.asarray(mask, bool)
    ref = terms.f32(ref_token_logps)
    rewards = beta * (terms.f32(dpo_token_logps) - ref)
    if rto_dpo_clip > 0:
        rewards = jnp.clip(rewards, -rto_dpo_clip, rto_dpo_clip)
    if policy_token_logps is not None:
        rewards = rewards - rto_kl_coef * (terms.f32(policy_token_logps) - ref)
    if sequence_reward is not None:
        score = (terms.f32(sequence_reward) - rto_seq_mean) / rto_seq_std
        if rto_seq_clip > 0:
            score = jnp.clip(score, -rto_seq_clip, rto_seq_clip)
        count = jnp.cumsum(mask, axis=-1)
        last = mask & (count == count[:, -1:])
        rewards = rewards + jnp.where(last, rto_seq_coef * score[:, None], 0.0)
    return jax.lax.stop_gradient(jnp.where(mask, rewards, 0.0))


@register("rto")
@pairwise_loss
def rto(logps: PairLogps, *, beta=0.1, label_smoothing=0.0) -> LossOutput:
    r"""RTO's first stage (Zhong et al., arXiv 2404.18922): train the token-reward model
    π_dpo with sigmoid DPO (Eq. 7 of arXiv 2305.18290); the loss is exactly ``sigmoid``.

    RTO's second stage is PPO with the token rewards ``rto_token_rewards`` of the model this
    stage produces. That stage is not a loss of log-likelihoods: the trainer samples completions
    online from the policy, scores them with π_dpo, π_ref (and optionally a sequence reward),
    fits a value head, computes GAE advantages over the token rewards and optimizes the clipped
    PPO surrogate: pojax.train.rto (the online loop runs it for ``loss.name = "rto"`` with
    ``reference.guide_path`` = this stage's export; the math is pojax.losses.ppo).

    When ``chosen_tokens`` / ``rejected_tokens`` carry ``ref``, the metrics add the mean token
    reward β·log π/π_ref of the model being trained: rto/token_reward_chosen, _rejected.
    """
    terms.require_ref(logps, "rto")
    out = sigmoid.raw(logps, beta=beta, label_smoothing=label_smoothing)
    ct, rt = logps.chosen_tokens, logps.rejected_tokens
    if ct is None or rt is None or ct.ref is None or rt.ref is None:
        return out
    metrics = dict(out.metrics)
    for side, tokens in (("chosen", ct), ("rejected", rt)):
        r = rto_token_rewards(tokens.policy, tokens.ref, tokens.mask, beta=beta)
        n = jnp.maximum(jnp.sum(tokens.mask, -1), 1).astype(jnp.float32)
        metrics[f"rto/token_reward_{side}"] = jnp.sum(r, -1) / n
    return out.replace(metrics=metrics)


@register("step_dpo")
@pairwise_loss
def step_dpo(logps: PairLogps, *, beta=0.1, label_smoothing=0.0) -> LossOutput:
    r"""Step-DPO (Lai et al., arXiv 2406.18629): sigmoid DPO on one reasoning step,

    L = -log σ( β log π(s_win|x, s_<k)/π_ref(s_win|x, s_<k) - β log π(s_lose|x, s_<k)/π_ref(s_lose|x, s_<k) ),

    the prompt x and the shared correct steps s_<k being the context of both completions. The
    loss is exactly ``sigmoid``; what makes it Step-DPO is the data: ``PairLogps.chosen`` /
    ``rejected`` are the log-likelihoods of the winning / losing step only (the "step" data
    format puts x + s_<k in the prompt).
    """
    terms.require_ref(logps, "step_dpo")
    return sigmoid.raw(logps, beta=beta, label_smoothing=label_smoothing)
