"""Drives TRL 1.16's own loss code on given log-likelihoods (the independent reference).

TRL computes its losses inline in trainer methods, from what the model returns. We build
trainer instances without their data/model set-up (``__new__`` + the attributes the loss
methods read) and give them a stand-in model that returns chosen per-token log-probs: every
token id in a batch is unique, and the stand-in looks its log-prob up in a table.
"""
from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch

PROMPT_LEN = 2


class TableModel(torch.nn.Module):
    """Returns log_probs[b, t] = table[input_ids[b, t + 1]] where labels are kept, else 0."""

    is_gradient_checkpointing = False

    def __init__(self, table, log_sum_sq=None):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.log_sum_sq = None if log_sum_sq is None else torch.as_tensor(log_sum_sq, dtype=torch.float32)

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        tgt = input_ids[:, 1:]
        keep = labels[:, 1:] != -100
        zeros = torch.zeros(tgt.shape)
        lp = torch.where(keep, self.table[tgt], zeros)
        lss = zeros if self.log_sum_sq is None else torch.where(keep, self.log_sum_sq[tgt], zeros)
        return SimpleNamespace(
            log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros(tgt.shape, dtype=torch.bool),
            log_sum_sq_probs=lss, aux_loss=None,
        )


def rows(lengths, width):
    """Token ids (unique per position), attention and completion masks for rows of
    PROMPT_LEN prompt tokens + ``lengths[i]`` completion tokens, right-padded to ``width``."""
    n = len(lengths)
    ids = np.arange(n * width).reshape(n, width)
    pos = np.arange(width)[None, :]
    lengths = np.asarray(lengths)[:, None]
    attention = pos < PROMPT_LEN + lengths
    completion = attention & (pos >= PROMPT_LEN)
    return ids, attention.astype(np.int64), completion.astype(np.int64)


def _trainer(cls, policy, ref, **attrs):
    from accelerate import Accelerator

    t = cls.__new__(cls)
    t.model, t.ref_model = policy, ref
    t.accelerator = Accelerator(cpu=True)
    t.precompute_ref_logps = False
    t.aux_loss_enabled = False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens = 0
    t._tp_size = 1
    t.args = SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=attrs.pop("discopop_tau", 0.05))
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


def dpo_loss(policy_tok, ref_tok, lss_tok, chosen_len, rejected_len, *, loss_type, loss_weights=None, beta=0.1,
             label_smoothing=0.0, ld_alpha=None, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0,
             use_weighting=False, discopop_tau=0.05):
    """TRL's DPOTrainer._compute_loss for one batch: the scalar batch loss and TRL's metrics.

    policy_tok, ref_tok, lss_tok: [2B, T] per-completion-token values (chosen rows first),
      valid for t < length of the row.
    """
    from trl import DPOTrainer

    lengths = np.concatenate([chosen_len, rejected_len])
    width = PROMPT_LEN + policy_tok.shape[1]
    ids, attention, completion = rows(lengths, width)
    tables = []
    for tok in (policy_tok, ref_tok, lss_tok):
        table = np.zeros(ids.size, np.float32)
        table[ids[:, PROMPT_LEN:].reshape(-1)] = np.asarray(tok, np.float32).reshape(-1)
        tables.append(table)
    policy = TableModel(tables[0], tables[2])
    ref = TableModel(tables[1])
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    t = _trainer(
        DPOTrainer, policy, ref, beta=beta, loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types), ld_alpha=ld_alpha,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        label_smoothing=label_smoothing, use_weighting=use_weighting, discopop_tau=discopop_tau,
    )
    inputs = {
        "input_ids": torch.as_tensor(ids),
        "attention_mask": torch.as_tensor(attention),
        "completion_mask": torch.as_tensor(completion),
    }
    with torch.no_grad():
        loss = t._compute_loss(policy, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in t._metrics["train"].items()}
    return float(loss), metrics


def kto_loss(policy, ref, kl, ref_kl, label, *, loss_type="kto", beta=0.1, desirable_weight=1.0,
             undesirable_weight=1.0):
    """TRL's KTOTrainer._compute_loss on per-sequence values, each held by a single completion
    token: policy/ref/label are [B]; kl/ref_kl are [B_kl] (the mismatched completions)."""
    from trl import KTOTrainer

    b, bk = len(policy), len(kl)
    ids, attention, completion = rows([1] * b, PROMPT_LEN + 1)
    kl_ids, kl_attention, kl_completion = rows([1] * bk, PROMPT_LEN + 1)
    kl_ids = kl_ids + ids.size
    pol_table = np.zeros(ids.size + kl_ids.size, np.float32)
    ref_table = np.zeros_like(pol_table)
    pol_table[ids[:, PROMPT_LEN]], ref_table[ids[:, PROMPT_LEN]] = policy, ref
    pol_table[kl_ids[:, PROMPT_LEN]], ref_table[kl_ids[:, PROMPT_LEN]] = kl, ref_kl
    t = _trainer(
        KTOTrainer, TableModel(pol_table), TableModel(ref_table), beta=beta, loss_type=loss_type,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        calculate_KL=loss_type == "kto",
    )
    batch = {
        "input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(attention),
        "completion_mask": torch.as_tensor(completion), "label": torch.as_tensor(np.asarray(label, bool)),
        "KL_input_ids": torch.as_tensor(kl_ids), "KL_attention_mask": torch.as_tensor(kl_attention),
        "KL_completion_mask": torch.as_tensor(kl_completion),
    }
    with torch.no_grad():
        loss = t._compute_loss(t.model, batch, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in t._metrics["train"].items()}


def cpo_per_example(chosen, rejected, *, loss_type, beta=0.1, label_smoothing=0.0, simpo_gamma=0.5, alpha=0.0):
    """TRL's CPOTrainer.cpo_loss: per-example losses and rewards from per-sequence log-probs
    (already averaged per token for ipo / simpo, as CPOTrainer.concatenated_forward does)."""
    from accelerate import Accelerator
    from trl.experimental.cpo import CPOTrainer

    t = CPOTrainer.__new__(CPOTrainer)
    t.accelerator = Accelerator(cpu=True)
    t.beta, t.label_smoothing, t.loss_type, t.simpo_gamma, t.alpha = beta, label_smoothing, loss_type, simpo_gamma, alpha
    losses, cr, rr = t.cpo_loss(torch.as_tensor(chosen, dtype=torch.float32), torch.as_tensor(rejected, dtype=torch.float32))
    return losses.numpy(), cr.numpy(), rr.numpy()


def orpo_ratio(chosen_avg, rejected_avg, *, beta=0.1):
    """TRL's ORPOTrainer.odds_ratio_loss: β·log σ(log odds ratio) per example, and the log odds."""
    from accelerate import Accelerator
    from trl.experimental.orpo import ORPOTrainer

    t = ORPOTrainer.__new__(ORPOTrainer)
    t.accelerator = Accelerator(cpu=True)
    t.beta = beta
    losses, cr, rr, _, _ = t.odds_ratio_loss(
        torch.as_tensor(chosen_avg, dtype=torch.float32), torch.as_tensor(rejected_avg, dtype=torch.float32)
    )
    return losses.numpy(), cr.numpy(), rr.numpy()
