"""Sequence log-likelihoods: exact autoregressive log-probs (chunked over the sequence so the
[B, T, V] logits never exist at once) and, for masked-diffusion LMs, ELBO estimates."""
