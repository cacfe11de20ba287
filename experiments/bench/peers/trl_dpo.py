"""TRL's DPOTrainer on the benchmark workload (PyTorch, CPU, fp32), as a TRL user runs it:
sigmoid loss, β = 0.1, a frozen reference copy, AdamW at a constant learning rate, grad-norm
clipping at 1.0, one optimizer step per batch of ``--pairs`` pairs.

    python experiments/bench/peers/trl_dpo.py --model=DIR --data=FILE --steps=20 --out=trl.json
"""
import argparse
import json
import resource
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--pairs", type=int, required=True)
    p.add_argument("--max_length", type=int, required=True)
    p.add_argument("--learning_rate", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
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
    times, losses = [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
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
                     dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    with open(a.out, "w") as f:
        json.dump({"framework": "trl", "step_times": times, "losses": [losses.get(i + 1) for i in range(a.steps)],
                   "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}, f)


if __name__ == "__main__":
    main()
