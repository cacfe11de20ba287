"""Batches of in-memory training arrays: a seeded permutation per epoch, indexed by step.

``batch_at(rows, step, ...)`` is a pure function of the step, so the data position of a run is
its step and a resumed run sees exactly the batches it would have seen (grain iterators with
checkpointable state replace this for file-backed datasets with the data issue).
"""
from __future__ import annotations

import numpy as np

from pojax.data.tokenize import mismatched


def batch_at(rows: dict, step: int, batch_size: int, seed: int) -> dict:
    """The batch of optimizer step ``step``: epoch e = step·B // N reads a permutation seeded
    by (seed, e). Unpaired batches get KTO's mismatched rows (kl_ids, kl_mask)."""
    n = len(next(iter(rows.values())))
    start = step * batch_size
    idx: list[int] = []
    while len(idx) < batch_size:
        epoch, offset = divmod(start + len(idx), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx.extend(perm[offset: offset + batch_size - len(idx)])
    batch = {k: v[np.asarray(idx)] for k, v in rows.items()}
    if "label" in batch and "kl_ids" not in batch:
        batch["kl_ids"], batch["kl_mask"] = mismatched(batch["input_ids"], batch["completion_mask"])
    return batch


def split_eval(rows: dict, n_eval: int) -> tuple[dict, dict | None]:
    """(train rows, the last ``n_eval`` rows held out), or (rows, None) when too few rows."""
    n = len(next(iter(rows.values())))
    if n_eval <= 0 or n <= 2 * n_eval:
        return rows, None
    return {k: v[:-n_eval] for k, v in rows.items()}, {k: v[-n_eval:] for k, v in rows.items()}
