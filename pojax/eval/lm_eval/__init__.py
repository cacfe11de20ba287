"""pojax models inside EleutherAI's lm-evaluation-harness (lm-eval 0.4.13).

``PojaxLM`` is an ``lm_eval`` model (registered as ``pojax``) for a Hugging Face checkpoint dir
that pojax loads (``pojax.models.from_pretrained``) or for a model already in memory:

    python -m pojax.eval.lm_eval run --model pojax --model_args path=<HF dir>,dtype=bfloat16 \\
        --tasks gsm8k arc_easy --batch_size 8
    lm_eval.simple_evaluate(model=PojaxLM(path=...), tasks=[...])

``python -m pojax.eval.lm_eval`` is lm-eval's own command line (every flag as ``lm_eval``'s) with
``pojax`` registered first: lm-eval 0.4.13 discovers third-party models only by import (no
plugin entry points), the way LLaDA's ``eval_llada.py`` registers ``llada_dist``.

Causal LMs (every family of pojax.models but LLaDA):
  loglikelihood          Σ log p(continuation | context) and whether greedy decoding reproduces
                         the continuation, with lm-eval's own request tokenization (TemplateLM:
                         context and continuation split as HFLM splits them, the BOS / EOS
                         prefix of an empty context, left truncation to ``max_length`` + 1).
                         Log-probs come from the chunked log-softmax
                         (pojax.likelihood.autoregressive; no [B, T, V] logits), gathered at the
                         continuation positions only.
  loglikelihood_rolling  lm-eval's disjoint rolling windows (lm_eval.utils), summed.
  generate_until         the KV-cache sampler (pojax.eval.generation.generate_ids): greedy
                         unless the task samples, stopping at EOS (the tokenizer's and the
                         config's), text cut at the first ``until`` string as lm-eval does.
Masked-diffusion LMs (LLaDA, ``config.model_type == "llada"``):
  loglikelihood          LLaDA's ``eval_llada.py`` estimate: ``mc_num`` masked copies of
                         context + continuation, ``mc_batch_size`` per forward, the
                         length-stratified ELBO (pojax.likelihood.diffusion.elbo; draws keyed
                         by the request's tokens, so a request's value does not depend on its
                         batch), optionally with classifier-free guidance ``cfg`` (the prompt
                         masked in the unconditional copy: logits = un + (w + 1)(cond − un),
                         computed on the final hidden states, which the LM head maps linearly).
                         ``check_greedy=True`` reproduces ``suffix_greedy_prediction``
                         (one token per step, most confident first); LLaDA's own scripts run
                         with it off, as pojax does by default (is_greedy is then False).
  loglikelihood_rolling  the same windows, each scored by its ELBO (a lower bound).
  generate_until         LLaDA's reverse process (pojax.sampling.diffusion) over ``gen_length``
                         tokens (default: the task's max_gen_toks) with ``steps``,
                         ``block_length``, ``cfg`` and ``remasking``; the text cut at ``until``.
Chat templates: lm-eval's ``--apply_chat_template`` renders through the tokenizer's template
(``apply_chat_template`` below, as HFLM does).

Model arguments (``--model_args k=v,...``): path, dtype (float32 | bfloat16 | float16),
batch_size, max_length (default: config.json's max_position_embeddings), max_gen_toks (256),
add_bos_token, prefix_token_id, mesh (data x fsdp x tensor sizes, e.g. ``1x8x1``; -1 = the
rest; from Python also a jax Mesh; default: one device), chunk_size, seed; LLaDA: mc_num (128),
mc_batch_size (32), cfg, check_greedy, gen_length, steps, block_length, remasking. ``device`` is
accepted and ignored (JAX places the arrays).
"""
from __future__ import annotations

import contextlib
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

try:
    import lm_eval
    import lm_eval.models  # lm-eval's own models first: its registry imports them only while empty
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import (Collator, handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                      postprocess_generated_text, resolve_max_length)
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError("pojax.eval.lm_eval needs lm-evaluation-harness: pip install -e '.[eval]' "
                      f"(lm-eval==0.4.13) ({err})") from None

from pojax import sharding
from pojax.eval.generation import DiffusionSampling, bucket, diffusion_mask_id, generate_ids
from pojax.likelihood.autoregressive import from_chunks, head_logits, soft_cap_of, to_chunks, token_logps_from_hidden
from pojax.likelihood.diffusion import elbo
from pojax.sampling import diffusion as diffusion_sampler

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# ---------------------------------------------------------------------------- causal LM scores


@functools.partial(nnx.jit, static_argnames=("chunk_size",))
def continuation_scores(model, ids_BW, index_BK, targets_BK, valid_BK, *, chunk_size: int = 256):
    """(Σ log p [B] float32, greedy [B] bool) of each row's continuation.

    Args:
      model: a pojax causal LM (``hidden_states``, ``lm_head_weight``).
      ids_BW: [B, W] int32 inputs, right-padded (causal attention never sees the padding).
      index_BK: [B, K] int32 positions whose next-token distributions score the continuation.
      targets_BK: [B, K] int32 the continuation tokens (any id where not valid).
      valid_BK: [B, K] bool, True on the continuation's tokens.
      chunk_size: positions per chunk of the log-softmax and of the greedy argmax (memory of
        the argmax ∝ B · chunk · V).

    Returns:
      (sum over valid positions of log p(target), all valid targets are the argmax).
    """
    hidden_BWD = model.hidden_states(ids_BW)
    h_BKD = jnp.take_along_axis(hidden_BWD, index_BK[..., None], axis=1)
    w_DV = model.lm_head_weight().astype(h_BKD.dtype)
    cap = soft_cap_of(model)  # Gemma 2's final-logit cap, as the model's own log-probs
    logps_BK = token_logps_from_hidden(h_BKD, w_DV, targets_BK, chunk_size=chunk_size, logit_soft_cap=cap)

    def argmax(h_BCD):
        return jnp.argmax(head_logits(h_BCD, w_DV, cap), -1)

    greedy_BK = from_chunks(jax.lax.map(argmax, to_chunks(h_BKD, chunk_size)), h_BKD.shape[1])
    total = jnp.sum(jnp.where(valid_BK, logps_BK, 0.0), axis=-1)
    return total, jnp.all(jnp.where(valid_BK, greedy_BK == targets_BK, True), axis=-1)


def causal_batch(pairs: list[tuple[list[int], list[int]]], max_length: int, *, rows: int | None = None):
    """Arrays of ``continuation_scores`` for (context ids, continuation ids) pairs, as HFLM
    feeds them: input = (context + continuation)[-(max_length + 1):][:-1], the continuation
    scored at the input's last len(continuation) positions. W and K are padded to powers of
    two (few compiles) and the batch to ``rows`` rows (copies of the last pair).

    Returns: (ids [R, W], index [R, K], targets [R, K], valid [R, K]) numpy int32 / bool.
    """
    pairs = list(pairs) + [pairs[-1]] * ((rows or len(pairs)) - len(pairs))
    inputs = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in pairs]
    conts = [cont[-len(inp):] if len(cont) > len(inp) else cont for inp, (_, cont) in zip(inputs, pairs)]
    w = bucket(max(map(len, inputs)))
    k = bucket(max(map(len, conts)), minimum=1)
    ids = np.zeros((len(pairs), w), np.int32)
    index = np.zeros((len(pairs), k), np.int32)
    targets = np.zeros((len(pairs), k), np.int32)
    valid = np.zeros((len(pairs), k), bool)
    for i, (inp, cont) in enumerate(zip(inputs, conts)):
        ids[i, :len(inp)] = inp
        start = len(inp) - len(cont)
        index[i, :len(cont)] = np.arange(start, len(inp))
        targets[i, :len(cont)] = cont
        valid[i, :len(cont)] = True
    return ids, index, targets, valid


# ---------------------------------------------------------------------------- masked-diffusion LM


class _Guided(nnx.Module):
    """A mask predictor whose final hidden states are classifier-free guided:
    h = h_un + (w + 1)(h_cond − h_un), h_un on the input with every prompt position masked
    (LLaDA's get_logits). The LM head is linear, so the logits are guided exactly so."""

    def __init__(self, model, prompt_mask_BT, mask_id: int, scale: float):
        self.model, self.prompt_mask, self.mask_id, self.scale = model, prompt_mask_BT, mask_id, scale

    def hidden_states(self, input_ids, *, positions=None, segment_ids=None):
        cond = self.model.hidden_states(input_ids, positions=positions, segment_ids=segment_ids)
        prompt = jnp.broadcast_to(self.prompt_mask, input_ids.shape)
        un = self.model.hidden_states(jnp.where(prompt, self.mask_id, input_ids), positions=positions,
                                      segment_ids=segment_ids)
        return un + (self.scale + 1.0) * (cond - un)

    def lm_head_weight(self):
        return self.model.lm_head_weight()


@functools.partial(nnx.jit, static_argnames=("n_mc", "mask_id", "cfg_scale", "chunk_size"))
def elbo_draws(model, tokens_1T, prompt_1T, real_1T, key, *, n_mc: int, mask_id: int, cfg_scale: float = 0.0,
               chunk_size: int = 1024):
    """One forward of ``n_mc`` masked copies of a single padded row: its length-stratified
    ELBO estimate [1] float32 (pojax.likelihood.diffusion.elbo). ``real_1T`` marks the row's
    tokens (padding is hidden from attention and never masked)."""
    scorer = model if cfg_scale == 0.0 else _Guided(model, prompt_1T, mask_id, cfg_scale)
    response = real_1T & ~prompt_1T
    return elbo(scorer, tokens_1T, prompt_1T, key, n_mc=n_mc, mask_id=mask_id, estimator="length_stratified",
                response_mask=response, segment_ids=real_1T.astype(jnp.int32), chunk_size=chunk_size)


def request_key(seed: int, context: list[int], continuation: list[int]):
    """A PRNG key of the request's tokens (CRC-32 of their ids): the same request gets the same
    draws in any batch, order or run."""
    data = np.asarray(context + [-1] + continuation, np.int64).tobytes()
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(data) & 0x7FFFFFFF)


def diffusion_loglikelihood(model, context: list[int], continuation: list[int], *, mask_id: int, mc_num: int = 128,
                            mc_batch_size: int = 32, cfg_scale: float = 0.0, seed: int = 0,
                            chunk_size: int = 1024) -> float:
    """LLaDA's Monte Carlo estimate of log p(continuation | context): the mean of ``mc_num``
    length-stratified draws (weights L / l), ``mc_batch_size`` per forward."""
    if mc_num % mc_batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be a multiple of mc_batch_size ({mc_batch_size})")
    n = len(context) + len(continuation)
    width = bucket(n)
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :n] = context + continuation
    prompt = (np.arange(width) < len(context))[None]
    real = (np.arange(width) < n)[None]
    key = request_key(seed, context, continuation)
    total = 0.0
    for i in range(mc_num // mc_batch_size):
        total += float(elbo_draws(model, jnp.asarray(tokens), jnp.asarray(prompt), jnp.asarray(real),
                                  jax.random.fold_in(key, i), n_mc=mc_batch_size, mask_id=mask_id,
                                  cfg_scale=float(cfg_scale), chunk_size=chunk_size)[0])
    return total / (mc_num // mc_batch_size)


def diffusion_greedy(model, context: list[int], continuation: list[int], *, mask_id: int,
                     cfg_scale: float = 0.0) -> bool:
    """LLaDA's ``suffix_greedy_prediction``: starting from context + len(continuation) masks,
    unmask one token per step, the most confident argmax first; True when that spells the
    continuation."""
    n = len(continuation)
    out = diffusion_sampler.generate(model, jnp.asarray([context], jnp.int32), jax.random.key(0), gen_length=n,
                                     steps=n, block_length=n, temperature=0.0, cfg_scale=cfg_scale,
                                     remasking="low_confidence", mask_id=mask_id)
    return bool(np.array_equal(np.asarray(out)[0], continuation))


# ---------------------------------------------------------------------------- the lm-eval model


def parse_mesh(spec) -> tuple[int, int, int] | None:
    """"DxFxT" (data, fsdp, tensor sizes; one may be -1) → a tuple; "" / None → None."""
    if spec is None or spec in ("", "none"):
        return None
    parts = str(spec).lower().split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise ValueError(f"mesh={spec!r}: expected data x fsdp x tensor sizes such as 1x8x1 (-1 = the rest)")
    return sizes


def _bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


@register_model("pojax")
class PojaxLM(TemplateLM):
    """lm-eval's model interface over a pojax causal LM or LLaDA (module docstring)."""

    backend = "causal"

    def __init__(self, path: str | None = None, *, model=None, tokenizer=None, dtype: str = "float32",
                 batch_size=8, max_batch_size=None, max_length=None, max_gen_toks: int = 256, add_bos_token=None,
                 prefix_token_id=None, mesh=None, chunk_size: int = 256, seed: int = 1234, mc_num: int = 128,
                 mc_batch_size: int = 32, cfg: float = 0.0, check_greedy=False, gen_length: int = 0, steps: int = 0,
                 block_length: int = 0, remasking: str = "low_confidence", device=None, pretrained=None):
        super().__init__()
        path = path or pretrained
        if model is None and not path:
            raise ValueError("PojaxLM needs path=<Hugging Face checkpoint dir> (or model= and tokenizer=)")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: one of {', '.join(DTYPES)}")
        if isinstance(mesh, jax.sharding.Mesh):  # a run's own mesh (task=eval)
            self.mesh = mesh
        else:
            sizes = parse_mesh(mesh)
            self.mesh = None if sizes is None else sharding.make_mesh(*sizes)
        if model is None:
            from pojax.models import from_pretrained

            model = from_pretrained(str(path), dtype=DTYPES[dtype], mesh=self.mesh,
                                    rules=sharding.DEFAULT_RULES if self.mesh is not None else None)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path or model.config.name_or_path), trust_remote_code=False)
        self.model, self.tokenizer = model, tokenizer
        self.path = str(path or "")
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self._max_length = int(max_length) if max_length else None
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = None if add_bos_token is None else _bool(add_bos_token)
        self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)
        self.chunk_size, self.seed = int(chunk_size), int(seed)
        self.mask_id = diffusion_mask_id(model)
        self.mc_num, self.mc_batch_size, self.cfg = int(mc_num), int(mc_batch_size), float(cfg)
        self.check_greedy = _bool(check_greedy)
        self.gen_length = int(gen_length)
        self.sampling = DiffusionSampling(steps=int(steps), block_length=int(block_length), cfg_scale=self.cfg,
                                          remasking=str(remasking))
        if self.mask_id is not None and self.mc_num % self.mc_batch_size:
            raise ValueError(f"mc_num ({self.mc_num}) must be a multiple of mc_batch_size ({self.mc_batch_size})")

    # -- lm-eval's properties

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self.model.config, self.tokenizer)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def _mesh(self):
        return sharding.use_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    # -- tokenization, as HFLM

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
            if has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
                add_special_tokens = False
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        ids = self.tokenizer.encode(string, **extra)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # -- scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, greedy: bool = True, **kwargs):
        from tqdm import tqdm

        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        for text, ctx, cont in requests:
            if not ctx or not cont:
                raise ValueError(f"lm-eval request {text!r}: the context and the continuation need a token each")
        out: list = [None] * len(pairs)
        bar = tqdm(total=len(pairs), disable=disable_tqdm or self.rank != 0, desc="pojax loglikelihood")
        with self._mesh():
            if self.mask_id is not None:
                for i, (ctx, cont) in enumerate(pairs):
                    out[i] = self._diffusion_pair(ctx, cont, greedy)
                    bar.update(1)
            else:
                order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    arrays = causal_batch([pairs[i] for i in chunk], self.max_length, rows=self.batch_size)
                    total, is_greedy = continuation_scores(self.model, *map(jnp.asarray, arrays),
                                                           chunk_size=self.chunk_size)
                    total, is_greedy = np.asarray(total), np.asarray(is_greedy)
                    for j, i in enumerate(chunk):
                        out[i] = (float(total[j]), bool(is_greedy[j]) and greedy)
                    bar.update(len(chunk))
        bar.close()
        for (text, _, _), answer in zip(requests, out):
            if text is not None:
                self.cache_hook.add_partial("loglikelihood", text, answer)
        return out

    def _diffusion_pair(self, ctx: list[int], cont: list[int], greedy: bool) -> tuple[float, bool]:
        if len(cont) >= self.max_length:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length={self.max_length}")
        ctx = ctx[-(self.max_length - len(cont)):]  # left truncation, as for a causal LM
        ll = diffusion_loglikelihood(self.model, ctx, cont, mask_id=self.mask_id, mc_num=self.mc_num,
                                     mc_batch_size=self.mc_batch_size, cfg_scale=self.cfg, seed=self.seed,
                                     chunk_size=self.chunk_size)
        is_greedy = greedy and self.check_greedy and diffusion_greedy(self.model, ctx, cont, mask_id=self.mask_id,
                                                                      cfg_scale=self.cfg)
        return ll, bool(is_greedy)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for context, target in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, target))
                owners.append(r)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, greedy=False)
        totals = [0.0] * len(requests)
        for r, (logp, _) in zip(owners, scores):
            totals[r] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        collator = Collator([req.args for req in requests], sort_fn=lambda x: (-len(self.tok_encode(x[0])), x[0]),
                            group_by="gen_kwargs", group_fn=lambda x: x[1])
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="pojax generate_until")
        out = []
        with self._mesh():
            for chunk in collator.get_batched(n=self.batch_size):
                contexts, all_kwargs = zip(*chunk)
                kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                out.extend(self._generate(list(contexts), until, kwargs))
                bar.update(len(chunk))
        bar.close()
        out = collator.get_original(out)
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def stop_token_ids(self) -> tuple[int, ...]:
        """EOS of the tokenizer and every EOS id of the model's config.json."""
        ids = [self.tokenizer.eos_token_id]
        config_eos = getattr(self.model.config, "eos_token_id", None)
        ids += list(config_eos) if isinstance(config_eos, (tuple, list)) else [config_eos]
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    def _generate(self, contexts: list[str], until: list[str], kwargs: dict) -> list[str]:
        max_gen = int(kwargs.pop("max_gen_toks"))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
        top_k, top_p = int(kwargs.pop("top_k", 0) or 0), float(kwargs.pop("top_p", 1.0) or 1.0)
        sampling = None
        if self.mask_id is not None:
            max_gen = self.gen_length or max_gen
            sampling = self.sampling
        elif max_gen >= self.max_length:
            raise ValueError(f"max_gen_toks ({max_gen}) must be less than max_length ({self.max_length})")
        prompts = [self.tok_encode(c, left_truncate_len=self.max_length - max_gen if self.mask_id is None else None)
                   for c in contexts]
        pad = self.tokenizer.pad_token_id
        if pad is None or pad == self.mask_id:
            pad = self.tokenizer.eos_token_id
        ids = generate_ids(self.model, prompts, max_new_tokens=max_gen, batch_size=self.batch_size,
                           temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=self.stop_token_ids(),
                           pad_id=int(pad), seed=self.seed, diffusion_sampling=sampling)
        return [postprocess_generated_text(self.tok_decode(row), until, None) for row in ids]

    def get_model_info(self) -> dict:
        return {"model_path": self.path, "model_type": getattr(self.model.config, "model_type", None)}


# ---------------------------------------------------------------------------- task=eval


def task_names(spec) -> list[str]:
    """eval.lm_eval_tasks ("gsm8k,arc_easy" or a list) → task names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [t.strip() for t in items if str(t).strip()]


def flat_metrics(results: dict) -> dict:
    """lm-eval's results["results"] as flat numbers: ``lm_eval/<task>/<metric>`` for the "none"
    filter, ``lm_eval/<task>/<metric>/<filter>`` for the others (non-numbers such as "N/A"
    stderrs left out)."""
    out = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key == "alias" or "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            out[f"lm_eval/{task}/{metric}" + ("" if filt == "none" else f"/{filt}")] = float(value)
    return out


def run_tasks(lm, tasks, *, include_path: str = "", include_defaults: bool = True, num_fewshot: int | None = None,
              limit: float | None = None, apply_chat_template: bool = False, seed: int = 1234) -> dict:
    """lm-eval's ``simple_evaluate`` of ``lm`` on ``tasks`` (lm-eval's own task names, groups,
    or YAML tasks under ``include_path``). Returns lm-eval's results dict (the per-sample
    logs left out). An unknown task is lm-eval's own KeyError, naming it."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path or None, include_defaults=include_defaults)
    results = lm_eval.simple_evaluate(model=lm, tasks=task_names(tasks), task_manager=manager, num_fewshot=num_fewshot,
                                      limit=limit or None, apply_chat_template=apply_chat_template, log_samples=False,
                                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                      fewshot_random_seed=seed)
    return {k: v for k, v in (results or {}).items() if k != "samples"}


__all__ = ["PojaxLM", "flat_metrics", "run_tasks", "task_names", "continuation_scores", "causal_batch", "diffusion_loglikelihood", "diffusion_greedy",
           "lm_eval"]
