"""Tunix's DPOTrainer (``tunix.sft.dpo.dpo_trainer``) on the benchmark workload (JAX, CPU, fp32),
as a Tunix user runs it: the HF Llama checkpoint loaded through Tunix's own
converter ``tunix.models.llama3.params.create_model_from_safe_tensors`` into its ``Llama3`` nnx
model (a ``ModelConfig`` built from the checkpoint's config.json: Tunix's named configs are real
Llama 3 sizes only), a second load of the same checkpoint as the frozen reference,
``DPOTrainer(model, ref_model, optax.chain(clip_by_global_norm(1.0), adamw(lr, weight_decay=0)),
DPOTrainingConfig(algorithm="dpo", beta=β, ...))`` and ``trainer.train(batches)``: one optimizer
step per batch of ``--pairs`` pairs, no gradient accumulation, no checkpoints, no eval.

    python experiments/bench/peers/tunix_dpo.py --model=DIR --data=FILE --steps=20 --pairs=8 \\
        --max_length=128 --out=tunix.json

Differences from a stock run, all so that every framework does the same math:

* Data goes in pre-tokenized (Tunix's documented ``TrainingInput`` path: left-padded prompt,
  right-padded completions, masks), tokenized with the checkpoint's own tokenizer exactly as TRL
  does: prompt without special tokens, completion + EOS. Tunix's raw-string path
  (``DataInput`` + tokenizer) prepends BOS to the prompt *and* to each completion and appends no
  EOS, so its sequences would differ from every other framework's.
* Tunix 0.1.7's Llama3 attention calls ``apply_rope`` without ``rope_theta``, so every Llama runs
  with θ = 1e6 whatever ``ModelConfig.rope_theta`` says (10000 here). By default this script
  wraps ``tunix.models.llama3.model.apply_rope`` to use the config's θ; ``--stock_rope`` runs
  Tunix unpatched (same cost per step, slightly different losses from step 2 on).

Step times: a ``DPOTrainer`` subclass stamps the clock when the trainer starts preparing a batch
(``_prepare_inputs``: the reference model's forward pass runs there) and, in
``_post_process_train_step`` (called right after the jitted train step is dispatched), blocks on
the step's loss and the updated parameters, then stamps again: a step is batch in → reference
logps → policy forward/backward → AdamW update done. Blocking there gives up Tunix's overlap of
one step's dispatch with the next (``max_inflight_computations``), which on CPU has no compute to
overlap with anyway. Losses are the trainer's own per-step ``train_loss``. Tunix compiles its train
step twice, at steps 1 and 2 (JAX_LOG_COMPILES shows two scalar state arguments, int32 and
uint32: nnx.Optimizer's step counter and, it appears, an nnx RNG counter, enter step 1
uncommitted to a device and come back committed), so steps 1 and 2 both carry compilation: leave
at least two warm-up steps out of any timing.
"""
import contract  # the runners' shared command line (sibling module)
import json
import os
import shutil
import tempfile
import time


def main():
    p = contract.parser()
    p.add_argument("--stock_rope", action="store_true", help="leave Tunix's fixed θ = 1e6 RoPE alone")
    a = p.parse_args()
    a.out = os.path.abspath(a.out)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from transformers import AutoTokenizer
    from tunix.models.llama3 import model as llama3_lib
    from tunix.models.llama3 import params as llama3_params
    from tunix.sft.dpo import dpo_trainer

    jax.config.update("jax_default_matmul_precision", "highest")  # fp32 compute (no-op on CPU)
    with open(os.path.join(a.model, "config.json")) as f:
        hf = json.load(f)
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise SystemExit(f"tunix_dpo: Tunix's Llama3 has no RoPE scaling; checkpoint has {rope or hf['rope_scaling']}")
    config = llama3_lib.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"], rope_theta=theta, norm_eps=hf["rms_norm_eps"],
        weight_tying=hf.get("tie_word_embeddings", False))
    if not a.stock_rope:
        stock_apply_rope = llama3_lib.apply_rope

        def apply_rope(inputs, positions, head_dim, rope_theta=theta):
            return stock_apply_rope(inputs, positions, head_dim=head_dim, rope_theta=rope_theta)

        llama3_lib.apply_rope = apply_rope  # Attention.block looks it up in the module at call time

    def load():
        return llama3_params.create_model_from_safe_tensors(a.model, config, mesh=None, dtype=jnp.float32)

    policy, reference = load(), load()

    # The workload's pairs, tokenized as TRL does: prompt as is, completion + EOS.
    tok = AutoTokenizer.from_pretrained(a.model)
    with open(a.data) as f:
        rows = [json.loads(line) for line in f if line.strip()][: a.pairs]
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    prompts = [enc(r["prompt"]) for r in rows]
    chosen = [enc(r["chosen"]) + [tok.eos_token_id] for r in rows]
    rejected = [enc(r["rejected"]) + [tok.eos_token_id] for r in rows]
    p_len = max(map(len, prompts))
    c_len = max(max(map(len, chosen)), max(map(len, rejected)))
    if p_len + c_len > a.max_length:
        raise SystemExit(f"tunix_dpo: pairs are {p_len} + {c_len} tokens, over --max_length={a.max_length}")

    def pad(seqs, n, left):
        ids = np.full((len(seqs), n), tok.pad_token_id, np.int32)
        mask = np.zeros((len(seqs), n), np.int32)
        for i, s in enumerate(seqs):
            sl = slice(n - len(s), n) if left else slice(0, len(s))
            ids[i, sl], mask[i, sl] = s, 1
        return ids, mask

    (pi, pm), (ci, cm), (ri, rm) = pad(prompts, p_len, True), pad(chosen, c_len, False), pad(rejected, c_len, False)
    batch = dpo_trainer.TrainingInput(prompt_ids=pi, prompt_mask=pm, chosen_ids=ci, chosen_mask=cm,
                                      rejected_ids=ri, rejected_mask=rm)

    times, losses = [], []

    class TimedDPOTrainer(dpo_trainer.DPOTrainer):
        def _prepare_inputs(self, training_input):
            self._t0 = time.perf_counter()
            return super()._prepare_inputs(training_input)

        def _post_process_train_step(self, aux):
            super()._post_process_train_step(aux)
            loss = self._buffered_train_metrics.losses[-1]
            jax.block_until_ready((loss, nnx.state(self.model, nnx.Param)))
            times.append(time.perf_counter() - self._t0)
            losses.append(float(loss))

    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(a.learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    training_config = dpo_trainer.DPOTrainingConfig(
        algorithm="dpo", beta=a.beta, label_smoothing=0.0, eval_every_n_steps=10**9, max_steps=a.steps,
        checkpoint_root_directory=None, metrics_logging_options=None, pbar_description=None)
    trainer = TimedDPOTrainer(model=policy, ref_model=reference, optimizer=optimizer,
                              training_config=training_config, tokenizer=tok)
    workdir, cwd = tempfile.mkdtemp(prefix="tunix_bench_"), os.getcwd()
    os.chdir(workdir)  # anything it writes by default lands here
    trainer.train([batch] * a.steps)
    os.chdir(cwd)
    shutil.rmtree(workdir, ignore_errors=True)

    contract.write(a.out, "tunix", times, losses)


if __name__ == "__main__":
    main()
