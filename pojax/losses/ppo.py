"""PPO on per-token rewards: generalized advantage estimation and the clipped surrogate with a
value loss. Pure array functions (no model): RTO's second stage (pojax.train.rto) feeds them the
token rewards of ``pojax.losses.rto_token_rewards``.

Alignment: every [B, T] array follows the shifted targets of
``pojax.likelihood.autoregressive.shift_targets``: position t is the state x, y_<t (hidden state
h_t) and its action is the token scored there; ``mask`` marks the completion's actions, one
contiguous run per row (right padding and the prompt are False).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pojax.losses import terms


def gae(rewards, values, mask, *, gamma=1.0, lam=0.95):
    r"""Generalized advantage estimates and returns (Schulman et al., arXiv 1506.02438, Eq. 16):

        δ_t = r_t + γ V_{t+1} − V_t,   Â_t = δ_t + γλ Â_{t+1},   R_t = Â_t + V_t,

    with V_{t+1} = 0 and Â_{t+1} = 0 past the last action of a row (the episode ends with the
    completion: no bootstrap).

    Args:
      rewards: [B, T] float token rewards r_t (0 off the mask).
      values: [B, T] float V(s_t) of the policy's value head at sampling time.
      mask: [B, T] bool actions (one contiguous run per row).
      gamma: γ discount. lam: λ of GAE (1 = Monte-Carlo returns minus V, 0 = one-step TD).
    Returns:
      (advantages, returns): [B, T] float32 each, 0 off the mask; no gradient.
    """
    mask = jnp.asarray(mask, bool)
    r = jnp.where(mask, terms.f32(rewards), 0.0)
    v = jnp.where(mask, terms.f32(values), 0.0)
    live_next = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    v_next = jnp.where(live_next, jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1), 0.0)
    delta = r + gamma * v_next - v

    def back(carry_B, xs):
        d_B, live_B, m_B = xs
        a_B = jnp.where(m_B, d_B + gamma * lam * jnp.where(live_B, carry_B, 0.0), 0.0)
        return a_B, a_B

    # scan from the last position to the first over the time axis
    _, adv_TB = jax.lax.scan(back, jnp.zeros(r.shape[:1], jnp.float32), (delta.T, live_next.T, mask.T), reverse=True)
    adv = adv_TB.T
    returns = jnp.where(mask, adv + v, 0.0)
    return jax.lax.stop_gradient(adv), jax.lax.stop_gradient(returns)


def whiten(x, mask, eps=1e-8):
    """(x − mean) / std over the masked entries of ``x`` [B, T] (PPO's advantage normalization,
    as in TRL and OpenRLHF); 0 off the mask."""
    mask = jnp.asarray(mask, bool)
    n = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    x = terms.f32(x)
    mean = jnp.sum(jnp.where(mask, x, 0.0)) / n
    var = jnp.sum(jnp.where(mask, (x - mean) ** 2, 0.0)) / n
    return jnp.where(mask, (x - mean) * jax.lax.rsqrt(var + eps), 0.0)


def ppo_loss(token_logps, old_token_logps, advantages, values, returns, mask, *, clip=0.2, value_coef=0.1):
    r"""PPO's clipped surrogate plus a value loss per sequence (Schulman et al., arXiv
    1707.06347, Eq. 7 and 9), averaged over each row's actions:

        ρ_t = exp(log π(y_t|·) − log π_old(y_t|·)),
        L^CLIP = −mean_t min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t),
        L^VF = mean_t ½ (V_t − R_t)²,       L = L^CLIP + c_v L^VF.

    No entropy bonus (c₂ = 0 of Eq. 9; LM PPO runs leave it out) and no value clipping.

    Args:
      token_logps: [B, T] log π(y_t|·) of the policy being trained (gradient flows).
      old_token_logps: [B, T] log π_old at sampling time. advantages, returns: [B, T] (``gae``).
      values: [B, T] V(s_t) of the value head being trained. mask: [B, T] bool actions.
      clip: ε. value_coef: c_v.
    Returns:
      (loss [B] float32, metrics {name: [B]}: ppo/policy_loss, ppo/value_loss, ppo/clipfrac
      (fraction of actions whose ratio was clipped), ppo/approx_kl (mean ½ (log ρ)²), ppo/ratio).
    """
    mask = jnp.asarray(mask, bool)
    n = jnp.maximum(jnp.sum(mask, -1), 1).astype(jnp.float32)
    row_mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0), -1) / n
    adv = jax.lax.stop_gradient(terms.f32(advantages))
    log_ratio = terms.f32(token_logps) - jax.lax.stop_gradient(terms.f32(old_token_logps))
    log_ratio = jnp.where(mask, log_ratio, 0.0)  # exp of a masked (maybe -inf) position must not leak NaN
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    policy_loss = row_mean(-jnp.minimum(ratio * adv, clipped * adv))
    value_loss = row_mean(0.5 * (terms.f32(values) - jax.lax.stop_gradient(terms.f32(returns))) ** 2)
    metrics = {"ppo/policy_loss": policy_loss, "ppo/value_loss": value_loss,
               "ppo/clipfrac": row_mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32)),
               "ppo/approx_kl": row_mean(0.5 * log_ratio**2), "ppo/ratio": row_mean(ratio)}
    return policy_loss + value_coef * value_loss, metrics
