"""TRL's DPOTrainer on the benchmark workload (PyTorch, CPU, fp32), as a TRL user runs it:
sigmoid loss, β = 0.1, a frozen reference copy, AdamW at a constant learning rate, grad-norm
clipping at 1.0, one optimizer step per batch of ``--pairs`` pairs.

    python experiments/bench/peers/trl_dpo.py --model=DIR --data=FILE --steps=20 --out=trl.json
"""
import contract  # the runners' shared command line (sibling module)
import time


def main():
    p = contract.parser()
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no_gradient_checkpointing", action="store_true", help="TRL's default is on")
    p.add_argument("--precompute_ref_log_probs", action="store_true", help="one reference pass, then no reference model")
    a = p.parse_args()

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    data = load_dataset("json", data_files=a.data, split="train")
    times, losses, between = [], {}, []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step >= 1:
                between.append(contract.rss_gib())
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses[state.global_step] = logs["loss"]

    args = DPOConfig(output_dir="/tmp/trl_bench_out", per_device_train_batch_size=a.pairs, max_steps=a.steps,
                     learning_rate=a.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     max_grad_norm=1.0, beta=a.beta, loss_type=["sigmoid"], max_length=a.max_length,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False,
                     dataloader_num_workers=0, seed=0, disable_tqdm=True,
                     gradient_checkpointing=not a.no_gradient_checkpointing,
                     precompute_ref_log_probs=a.precompute_ref_log_probs)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    contract.write(a.out, "trl", times, [losses.get(i + 1) for i in range(a.steps)], between)


if __name__ == "__main__":
    main()
