"""pojax.likelihood: per-token and per-sequence log-likelihoods of LMs as pure array functions.

``autoregressive``: exact log-probs of a causal LM from hidden states and the LM head, chunked
over the sequence under ``jax.checkpoint`` so the [B, T, V] logits never exist at once.
``token_kl``: per-token KL(π_ref ‖ π) over the vocabulary (TDPO), chunked the same way.
"""
