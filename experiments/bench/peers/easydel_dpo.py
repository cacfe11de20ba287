"""EasyDeL's DPOTrainer on the benchmark workload (JAX, CPU, fp32), as an EasyDeL user runs it:
``AutoEasyDeLModelForCausalLM.from_pretrained(DIR, from_torch=True)`` (EasyDeL's own HF → EasyDeL
converter; it reads the checkpoint through PyTorch, so the EasyDeL environment needs ``torch``,
and EasyDeL 0.3.0 also imports ``PIL`` without declaring pillow), then
``DPOTrainer(arguments=DPOConfig(...), model=..., processing_class=tokenizer,
train_dataset=load_dataset("json", ...))`` and ``trainer.train()``: sigmoid loss, β = 0.1, the
frozen reference a copy of the initial policy (EasyDeL's default when ``reference_model`` is
None), AdamW at a constant learning rate (``scheduler=none``, no warm-up, weight decay 0),
clipping at 1.0 (``clip_grad``), one optimizer step per batch of ``--pairs`` pairs, no shuffling,
no checkpoints, no eval.

    python experiments/bench/peers/easydel_dpo.py --model=DIR --data=FILE --steps=20 --pairs=8 \\
        --max_length=128 --out=easydel.json

fp32 throughout: params and compute ``float32`` with ``Precision.HIGHEST``, and the attention's
own dtypes (``attn_dtype``, ``kvdtype``, ``attn_softmax_dtype``) forced to float32 through
``config_kwargs`` (EasyDeL's ``attn_dtype`` defaults to bfloat16 whatever the model dtype).
Tokenization is EasyDeL's ``DPOPreprocessTransform``: prompt without special tokens, completion
+ EOS, like TRL. ``max_prompt_length`` is the longest prompt in the data (the workload's prompts
are all that long) and ``max_completion_length`` = ``--max_length`` − that.

Step times are the trainer's own ``metrics.execution_time``: the wall time of
``_execute_train_step`` (batch preprocessing, then the jitted step, which runs the reference
forward, the policy forward/backward and the AdamW update, under ``jax.block_until_ready``), read
in the ``on_step_end`` hook along with that step's loss.
"""
import contract  # the runners' shared command line (sibling module)
import os
import shutil
import tempfile


def main():
    p = contract.parser()
    a = p.parse_args()
    a.out = os.path.abspath(a.out)

    import importlib.util

    missing = [pkg for mod, pkg in (("torch", "torch"), ("PIL", "pillow")) if importlib.util.find_spec(mod) is None]
    if missing:  # EasyDeL 0.3.0 declares neither; its HF loader needs torch and it imports PIL
        raise SystemExit(f"easydel_dpo: EasyDeL's environment lacks {', '.join(missing)}: pip install {' '.join(missing)}"
                         " (CPU torch is enough: it only reads the HF checkpoint)")

    import jax
    import jax.numpy as jnp
    from datasets import load_dataset
    from transformers import AutoTokenizer

    import easydel as ed

    jax.config.update("jax_default_matmul_precision", "highest")
    tok = AutoTokenizer.from_pretrained(a.model)
    data = load_dataset("json", data_files=a.data, split="train").select(range(a.pairs))
    prompt_len = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in data["prompt"])
    if prompt_len >= a.max_length:
        raise SystemExit(f"easydel_dpo: prompts of {prompt_len} tokens leave no room in --max_length={a.max_length}")

    model = ed.AutoEasyDeLModelForCausalLM.from_pretrained(
        a.model, from_torch=True, dtype=jnp.float32, param_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST, device=jax.devices("cpu")[0], sharding_axis_dims=(1, 1, 1, 1, 1),
        config_kwargs=ed.EasyDeLBaseConfigDict(attn_dtype=jnp.float32, kvdtype=jnp.float32,
                                               attn_softmax_dtype=jnp.float32),
        verbose=False)

    times, losses = [], []

    class TimedDPOTrainer(ed.DPOTrainer):
        def on_step_end(self, state, metrics, step):
            times.append(float(metrics.execution_time))
            losses.append(float(metrics.loss))
            return super().on_step_end(state=state, metrics=metrics, step=step)

    workdir = tempfile.mkdtemp(prefix="easydel_bench_")
    args = ed.DPOConfig(
        beta=a.beta, loss_type="sigmoid", label_smoothing=0.0, reference_free=False,
        max_length=a.max_length, max_prompt_length=prompt_len, max_completion_length=a.max_length - prompt_len,
        learning_rate=a.learning_rate, scheduler=ed.EasyDeLSchedulers.NONE, warmup_steps=0, weight_decay=0.0,
        optimizer=ed.EasyDeLOptimizers.ADAMW, clip_grad=1.0, total_batch_size=a.pairs,
        gradient_accumulation_steps=1, max_training_steps=a.steps, num_train_epochs=a.steps,
        shuffle_train_dataset=False, do_eval=False, do_last_save=False, save_steps=None,
        save_directory=workdir, resume_if_possible=False, use_wandb=False, report_metrics=False, log_steps=1,
        progress_bar_type="json", verbose=False)
    trainer = TimedDPOTrainer(arguments=args, model=model, reference_model=None, processing_class=tok,
                              train_dataset=data)
    trainer.train()
    shutil.rmtree(workdir, ignore_errors=True)

    contract.write(a.out, "easydel", times, losses)


if __name__ == "__main__":
    main()
