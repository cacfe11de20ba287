"""What the golden-file scripts share: random weights that expose misplaced parameters, and the
provenance hash of the reference files."""
from __future__ import annotations

import hashlib
import os


def randomize_(model, norm_center: float = 1.0):
    """Every parameter of a torch model redrawn in place: norms around ``norm_center`` (Gemma's
    (1 + w) norms: 0), biases and weights around 0. Their init (ones, zeros) would hide a
    misplaced parameter."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_center + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def files_sha256(directory: str, files) -> str:
    """sha256 of the concatenated bytes of ``files`` in ``directory`` (in that order)."""
    h = hashlib.sha256()
    for f in files:
        with open(os.path.join(directory, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()
