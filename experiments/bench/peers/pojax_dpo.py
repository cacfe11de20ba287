"""pojax on the benchmark workload, exactly as a user runs it: ``python -m pojax.main
--config=configs/dpo.py`` with the workload's model, data and settings as overrides (sigmoid DPO,
β = 0.1, reference.mode = copy, AdamW at a constant learning rate, clipping at 1.0, fp32). Step
times are the trainer's own ``step_time_s`` (host batch in → metrics fetched back).

    python experiments/bench/peers/pojax_dpo.py --model=DIR --data=FILE --steps=20 --pairs=8 \\
        --prompt_len=64 --completion_len=64 --out=pojax.json [--extra=--config.likelihood.chunk_size=128]
"""
import argparse
import json
import os
import runpy
import shutil
import sys
import tempfile

import contract  # the runners' shared measurements (sibling module)


def overrides(a) -> list[str]:
    return [f"--config.model.path={a.model}", f"--config.data.path={a.data}", "--config.data.format=paired",
            "--config.data.chat_template=no", f"--config.data.max_prompt_length={a.prompt_len}",
            f"--config.data.max_completion_length={a.completion_len}", "--config.model.dtype=float32",
            f"--config.optimizer.learning_rate={a.learning_rate}", "--config.optimizer.schedule=constant",
            "--config.optimizer.warmup_steps=0", "--config.optimizer.weight_decay=0.0",
            "--config.optimizer.max_grad_norm=1.0", f"--config.loss.beta={a.beta}",
            f"--config.train.batch_size={a.pairs}", f"--config.train.max_steps={a.steps}",
            "--config.eval.num_examples=0", "--config.train.export_final=False",
            f"--config.checkpoint.every_steps={a.steps}", "--config.logging.plots=False",
            "--config.logging.progress=False", "--config.logging.every_steps=1", "--config.mesh.data=1",
            "--config.mesh.fsdp=1"]


def _watch_memory() -> tuple[list, list]:
    """Measurement only (the run is unchanged): the RSS as each step after the first is handed to
    the compiled step (the previous step's metrics were fetched, so it is done and its temporaries
    freed), and the peak RSS when the first checkpoint save begins (the benchmark saves once, after
    the last step: training's peak without the save's host copy of the state, which TRL's runner
    never makes)."""
    from pojax.train import checkpoint, memory

    between, before_save = [], []
    call, save = memory.CompiledStep.__call__, checkpoint.Checkpoints.save

    def watched_call(self, *args):
        if self.compiled is not None:
            between.append(contract.rss_gib())
        return call(self, *args)

    def watched_save(self, *args, **kwargs):
        if not before_save:
            before_save.append(contract.peak_rss_gib())
        return save(self, *args, **kwargs)

    memory.CompiledStep.__call__, checkpoint.Checkpoints.save = watched_call, watched_save
    return between, before_save


def main():
    from pojax import host

    host.prepare_process()  # what `python -m pojax.main` does first
    p = argparse.ArgumentParser()
    for name in ("model", "data", "out"):
        p.add_argument(f"--{name}", required=True)
    for name in ("steps", "pairs", "prompt_len", "completion_len"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--learning_rate", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--extra", action="append", default=[], help="more --config.* overrides")
    a = p.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    workdir = tempfile.mkdtemp(prefix="pojax_bench_")
    between, before_save = _watch_memory()
    sys.argv = ["pojax.main", f"--config={os.path.join(root, 'configs', 'dpo.py')}", f"--workdir={workdir}",
                *overrides(a), *a.extra]
    try:
        runpy.run_module("pojax.main", run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    memory = None
    if os.path.exists(os.path.join(workdir, "memory.json")):  # pojax.train.memory's accounting
        with open(os.path.join(workdir, "memory.json")) as f:
            memory = json.load(f)
    shutil.rmtree(workdir, ignore_errors=True)  # its checkpoint: 11 bytes per parameter (fp32 + AdamW)
    with open(a.out, "w") as f:
        json.dump({"framework": "pojax", "step_times": [r["step_time_s"] for r in rows],
                   "losses": [r["loss"] for r in rows], "memory": memory,
                   "peak_rss_gib": contract.peak_rss_gib(),
                   "rss_between_steps_gib": between, "peak_rss_steps_gib": before_save[0] if before_save else None}, f)


if __name__ == "__main__":
    main()
