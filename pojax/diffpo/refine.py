"""``refine``: DiffPO's plug-in entry point — any base model's answers in, aligned answers out.

The base responses are plain text (or token ids) from any source: a pojax model, a transformers
model, a JSONL of another system's answers. They are re-tokenized with the aligner's tokenizer,
placed in the response slots after the prompt as the initial guess, and refined by Jacobi
iteration (pojax.diffpo.jacobi). The aligner never sees the base model, so it is policy-agnostic
by construction.

With no step cap (``max_steps=None``) a causal aligner's fixed point is its own greedy decode of
the prompt and the reserved prefix; the base response matters through small step budgets k,
which is where DiffPO's speed comes from (k parallel passes instead of N sequential ones), and
through the reserved prefix at any k.

Reserved prefix (the authors' inference, zjuruizhechen/DiffPO ``gen_DiffuPO_answer.py``): each
answer's first r tokens are appended to the prompt and kept verbatim, r drawn per answer uniformly
from 0 … ``--reserve_tokens`` (12) inclusive, so the converged answer continues the base answer's
opening. ``draw_reserved_prefix`` makes those draws, seeded (theirs come from Python's unseeded
``random.randint``); ``refine(..., reserved_prefix=draws)`` keeps them.

Shapes are static per call: rows are [prompt (left-aligned) | block_size slots | padding] with the
prompt width rounded up to a multiple of ``width_multiple`` and the batch padded to
``batch_size`` rows, so repeated calls reuse one compilation.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pojax.diffpo.jacobi import jacobi_refine

OVERFLOW = ("error", "truncate", "blocks")


def _encode(tokenizer, texts, *, special: bool):
    if tokenizer is None:
        return [np.asarray(t, np.int64).reshape(-1) for t in texts]
    return [np.asarray(tokenizer.encode(t, add_special_tokens=special), np.int64) for t in texts]


def draw_reserved_prefix(num: int, reserve_tokens: int, seed: int) -> np.ndarray:
    """The authors' reserved-prefix lengths: [num] int64, each uniform on 0 … reserve_tokens
    (both ends included, as Python's ``random.randint(0, reserve_tokens)``), one per answer, from
    ``np.random.default_rng(seed)`` (same seed, same draws).

    Raises:
      ValueError: reserve_tokens < 0.
    """
    if reserve_tokens < 0:
        raise ValueError(f"diffpo: reserve_tokens must be >= 0, got {reserve_tokens}")
    return np.random.default_rng(seed).integers(0, int(reserve_tokens), size=int(num), endpoint=True)


def refine(aligner, tokenizer, prompts: Sequence, base_responses: Sequence, *, max_steps: int | None,
           block_size: int | None = None, eos_id: int | None = None, pad_id: int | None = None,
           on_overflow: str = "error", reserved_prefix: int | Sequence[int] = 0, batch_size: int = 16,
           width_multiple: int = 16, return_stats: bool = False, temperature: float = 0.0, key=None,
           prefix_cache: bool = False):
    """Refines ``base_responses`` to ``prompts`` with the aligner by Jacobi iteration.

    Args:
      aligner: a causal LM (``hidden_states``, ``lm_head_weight``, ``config.vocab_size``).
      tokenizer: the aligner's tokenizer (``encode(text, add_special_tokens=...)``, ``decode``,
        ``eos_token_id``, ``pad_token_id``, ``len()``), or None when prompts and responses are
        already token-id sequences of the aligner's vocabulary (then ids come back).
      prompts: B prompts, text already formatted as the aligner expects (chat template applied),
        or id sequences; each needs at least one token.
      base_responses: B base answers (text or ids); an empty one starts from all-``pad_id`` slots.
      max_steps: Jacobi step budget k; None runs to convergence (the aligner's greedy decode).
      block_size: N response slots; None = the longest base response (at least 1).
      eos_id: token that ends a response (slots after it become ``pad_id``); default the
        tokenizer's EOS, None without a tokenizer.
      pad_id: filler of empty slots; default the tokenizer's pad (else its EOS, else 0).
      on_overflow: a base response longer than block_size: "error" (ValueError naming the row),
        "truncate" (its first block_size tokens are the initial guess) or "blocks" (block by
        block: block b is refined after the prompt and the refined blocks before it, with the
        base response's tokens b·N … (b+1)·N − 1 as its guess, until the base response is used
        up or EOS; a row's stats add up over its blocks).
      reserved_prefix: how many first tokens of each base response are kept as they are
        (appended to the prompt, never refined; returned at the start of the response): one count
        for every row, or B counts (``draw_reserved_prefix``: the authors' random 0 … 12). A base
        response shorter than its count is kept whole and the aligner continues after it. The
        block_size slots come after the reserved tokens (as the authors' 256 tokens do).
      batch_size: rows per compiled call (the last call is padded with copies of a row).
      width_multiple: prompt widths are rounded up to a multiple of this (fewer compilations).
      return_stats: also return {"updates", "forward_passes", "converged"} per response.
      temperature: 0 = greedy Jacobi updates; τ > 0 = sampled updates (pojax.diffpo.jacobi), with
      key: their PRNG key (each compiled call folds in its block and first row, so a response
        depends on the key, its position in the inputs and batch_size, not on other calls).
      prefix_cache: the prompt's keys and values computed once per block and kept in a KV cache;
        each Jacobi step runs only the block (pojax.diffpo.jacobi.jacobi_step_cached).

    Returns:
      B responses (text, or int lists without a tokenizer) cut before their first EOS; with
      ``return_stats`` a pair (responses, stats).

    Raises:
      ValueError: mismatched lengths, an empty prompt, an over-long response with
        on_overflow="error", a tokenizer or token ids that do not fit the aligner's vocabulary.
    """
    if len(prompts) != len(base_responses):
        raise ValueError(f"diffpo.refine: {len(prompts)} prompts but {len(base_responses)} base responses")
    if on_overflow not in OVERFLOW:
        raise ValueError(f"diffpo.refine: on_overflow={on_overflow!r} is not one of {', '.join(OVERFLOW)}")
    vocab = int(aligner.config.vocab_size)
    if tokenizer is not None:
        if len(tokenizer) > vocab:
            raise ValueError(f"diffpo.refine: tokenizer mismatch: the tokenizer has {len(tokenizer)} tokens but the "
                             f"aligner's vocabulary has {vocab}; use the aligner checkpoint's own tokenizer")
        eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
        if pad_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    p_ids = _encode(tokenizer, prompts, special=True)
    r_ids = _encode(tokenizer, base_responses, special=False)
    for i, (p, r) in enumerate(zip(p_ids, r_ids)):
        if p.size == 0:
            raise ValueError(f"diffpo.refine: prompt {i} is empty")
        for what, ids in (("prompt", p), ("base response", r)):
            if ids.size and (ids.min() < 0 or ids.max() >= vocab):
                raise ValueError(f"diffpo.refine: {what} {i} has token ids outside the aligner's vocabulary [0, {vocab})")
    res = np.asarray(reserved_prefix, np.int64)
    res = np.full(len(r_ids), res) if res.ndim == 0 else res
    if res.shape != (len(r_ids),):
        raise ValueError(f"diffpo.refine: reserved_prefix has shape {res.shape}, not ({len(r_ids)},): one count per "
                         "base response")
    if res.size and res.min() < 0:
        raise ValueError(f"diffpo.refine: reserved_prefix must be >= 0, got {int(res.min())}")
    n = block_size if block_size is not None else max(1, max((r.size - k for r, k in zip(r_ids, res)), default=1))
    for i, (r, k) in enumerate(zip(r_ids, res)):
        if r.size - k > n and on_overflow == "error":
            after = f" after its {k} reserved" if k else ""
            raise ValueError(f"diffpo.refine: base response {i} has {r.size - k} tokens{after}, more than "
                             f"block_size={n}; raise block_size or pass on_overflow='truncate' or 'blocks'")
    if temperature > 0 and key is None:
        raise ValueError("diffpo.refine: temperature > 0 (sampled Jacobi updates) needs a PRNG key")
    kw = {"max_steps": max_steps, "eos_id": eos_id, "pad_id": pad_id, "batch_size": batch_size,
          "width_multiple": width_multiple, "temperature": temperature,
          "prefix_cache": prefix_cache}
    # the first tokens of the base answer are kept: they join the prompt
    kept = [r[:k] for r, k in zip(r_ids, res)]
    p_ids = [np.concatenate([p, k]) for p, k in zip(p_ids, kept)]
    r_ids = [r[k:] for r, k in zip(r_ids, res)]
    n_blocks = [1] * len(r_ids)
    if on_overflow == "blocks":
        n_blocks = [max(1, -(-r.size // n)) for r in r_ids]
    toks = [[int(t) for t in k] for k in kept]
    stats = {"updates": [0] * len(p_ids), "forward_passes": [0] * len(p_ids), "converged": [True] * len(p_ids)}
    done = [False] * len(p_ids)
    for b in range(max(n_blocks)):
        live = [i for i in range(len(p_ids)) if not done[i] and b < n_blocks[i]]
        prompts_b = [np.concatenate([p_ids[i], np.asarray(toks[i][len(kept[i]):], np.int64)]) for i in live]
        guesses_b = [r_ids[i][b * n:(b + 1) * n] for i in live]
        block_key = None if key is None else jax.random.fold_in(key, b)
        block, st = _refine_block(aligner, prompts_b, guesses_b, n, key=block_key, **kw)
        for i, out, u, f, c in zip(live, block, st["updates"], st["forward_passes"], st["converged"]):
            if eos_id is not None and eos_id in out:
                out, done[i] = out[:out.index(eos_id)], True
            toks[i].extend(out)
            stats["updates"][i] += u
            stats["forward_passes"][i] += f
            stats["converged"][i] &= c
    outs = toks if tokenizer is None else [tokenizer.decode(t, skip_special_tokens=True) for t in toks]
    return (outs, stats) if return_stats else outs


def _refine_block(aligner, p_ids, r_ids, n, *, max_steps, eos_id, pad_id, batch_size, width_multiple, temperature,
                  key, prefix_cache):
    """One block of N slots per row: (slot tokens per row, stats lists)."""
    pw = max(p.size for p in p_ids)
    pw = -(-pw // width_multiple) * width_multiple
    width = pw + n
    outs, stats = [], {"updates": [], "forward_passes": [], "converged": []}
    for start in range(0, len(p_ids), batch_size):
        rows = list(range(start, min(start + batch_size, len(p_ids))))
        ids = np.full((batch_size, width), pad_id, np.int32)
        slots = np.zeros((batch_size, width), bool)
        for j, i in enumerate(rows + [rows[0]] * (batch_size - len(rows))):
            p, r = p_ids[i], r_ids[i][:n]
            ids[j, :p.size] = p
            ids[j, p.size:p.size + r.size] = r
            slots[j, p.size:p.size + n] = True
        res = jacobi_refine(aligner, jnp.asarray(ids), jnp.asarray(slots), max_steps=max_steps, eos_id=eos_id,
                            pad_id=pad_id, temperature=temperature, prefix_cache=prefix_cache,
                            key=None if key is None else jax.random.fold_in(key, start))
        out, updates, passes, converged = (np.asarray(x) for x in (res.ids, res.updates, res.forward_passes,
                                                                    res.converged))  # one fetch each
        for j, i in enumerate(rows):
            outs.append(out[j, p_ids[i].size:p_ids[i].size + n].tolist())
            stats["updates"].append(int(updates[j]))
            stats["forward_passes"].append(int(passes[j]))
            stats["converged"].append(bool(converged[j]))
    return outs, stats
