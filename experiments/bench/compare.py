"""pojax against its peers on the same DPO work, side by side in one run.

    python -m experiments.bench.compare --workload=tiny --rounds=3 \\
        --peer=trl --peer=tunix:/opt/venvs/tunix/bin/python --peer=easydel:/opt/venvs/easydel/bin/python

Each framework trains ``--steps`` optimizer steps of sigmoid DPO on the files of
experiments/bench/workload.py (same random Llama, same tokenizer, same pairs), one framework at a
time in its own process (its own Python: ``name:path``; a bare name uses this interpreter), for
``--rounds`` rounds in rotating order; a framework's step time is the median, over rounds, of
its median step time after ``--warmup`` steps. Reported per framework: s/step, steps/s,
tokens/s, each as a ratio to pojax's figure of the same run; the loss at step 1 and at the last
step (all frameworks do the same work: both agree to a few 1e-5 when they run the same math);
the process's peak RSS; and the compute floor (experiments/bench/flops.py). Results go to
``--out`` (default experiments/bench/results/) as <hardware>_<workload>.json and .md.

Measure on an idle machine: anything else running inflates every figure several-fold.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

from experiments.bench import flops, workload

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_SCRIPTS = {name: os.path.join(HERE, "peers", f"{name}_dpo.py") for name in ("pojax", "trl", "tunix", "easydel")}

_WORKLOAD = flags.DEFINE_string("workload", "tiny", f"one of {', '.join(workload.WORKLOADS)}")
_VOCAB = flags.DEFINE_integer("vocab", 0, "override the workload's vocabulary size (0 = its own)")
_PEERS = flags.DEFINE_multi_string("peer", ["trl"], "peer framework as name[:python]; pojax always runs")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "rounds (every framework once per round)")
_STEPS = flags.DEFINE_integer("steps", 20, "optimizer steps per run")
_WARMUP = flags.DEFINE_integer("warmup", 5, "steps left out of the timing (compilation, caches)")
_ROOT = flags.DEFINE_string("data_dir", os.path.join(tempfile.gettempdir(), "pojax_bench"), "where the workload files go")
_OUT = flags.DEFINE_string("out", os.path.join(HERE, "results"), "results directory")
_HARDWARE = flags.DEFINE_string("hardware", "", "hardware name for the results (default: the CPU model and cores)")


def parse_peer(spec: str) -> tuple[str, str]:
    name, _, python = spec.partition(":")
    if name not in PEER_SCRIPTS:
        raise app.UsageError(f"--peer={spec}: unknown framework {name!r}; one of {', '.join(PEER_SCRIPTS)}")
    return name, python or sys.executable


def command(name: str, python: str, w: workload.Workload, paths: dict, steps: int, out: str) -> list[str]:
    args = [python, PEER_SCRIPTS[name], f"--model={paths['model']}", f"--data={paths['data']}",
            f"--steps={steps}", f"--pairs={w.pairs}", f"--learning_rate={w.learning_rate}", f"--beta={w.beta}",
            f"--out={out}"]
    if name == "pojax":
        args += [f"--prompt_len={w.prompt_len}", f"--completion_len={w.completion_len}"]
    else:
        args += [f"--max_length={w.seq_len}"]
    return args


def run_one(cmd: list[str], out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(HERE)), TOKENIZERS_PARALLELISM="false")
    # one real device per framework: drop a forced host-device count (the mesh tests' setting)
    flags_ = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags_)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    with open(out) as f:
        return json.load(f)


def summarize(runs: list[dict], w: workload.Workload, warmup: int) -> dict:
    """Median over rounds of each run's median post-warm-up step time, and the losses."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"]}
    per_round = [statistics.median(r["step_times"][warmup:]) for r in ok]
    s = statistics.median(per_round)
    tokens = 2 * w.pairs * w.seq_len
    return {"s_per_step": s, "steps_per_s": 1 / s, "tokens_per_s": tokens / s, "rounds": per_round,
            "loss_first": ok[0]["losses"][0], "loss_last": ok[0]["losses"][-1],
            "peak_rss_gib": max(r["peak_rss_gib"] for r in ok)}


def hardware_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    model = model.replace("(R)", "").replace("(TM)", "").replace(" Processor", "").strip()
    return f"{model} ({os.cpu_count()} cores)"


def markdown(result: dict) -> str:
    w, floor = result["workload"], result["floor_s_per_step"]
    lines = [f"# DPO step, workload {w['name']} ({result['hardware']})", "",
             f"{w['hidden']}d × {w['layers']} layers, vocab {w['vocab']}, {w['pairs']} pairs of "
             f"{w['prompt_len']} + {w['completion_len']} tokens, fp32; {result['rounds']} rounds × "
             f"{result['steps']} steps, median after {result['warmup']} warm-up steps.", "",
             f"Compute floor: {result['step_gflop']:.1f} GFLOP/step at {result['matmul_gflops']:.1f} GFLOP/s "
             f"(jit 2048² fp32 matmul, best of 10) = {floor:.3f} s/step.", "",
             f"pojax computes each prompt once and the LM head on completion tokens only: "
             f"{result['pojax_step_gflop']:.1f} GFLOP/step, {result['pojax_step_gflop'] / result['step_gflop']:.0%} "
             f"of the model FLOPs above (its own floor {result['pojax_step_gflop'] / result['matmul_gflops']:.3f} s/step).", "",
             "| framework | s/step | tokens/s | pojax speed-up | × floor | loss step 1 | loss last | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["frameworks"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].splitlines()[-1][:80] if r['error'] else ''} |||||||")
            continue
        lines.append(f"| {name} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['pojax_speedup']:.2f}× | "
                     f"{r['s_per_step'] / floor:.2f} | {r['loss_first']:.6f} | {r['loss_last']:.6f} | "
                     f"{r['peak_rss_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    del argv
    if _WORKLOAD.value not in workload.WORKLOADS:
        raise app.UsageError(f"--workload={_WORKLOAD.value}: one of {', '.join(workload.WORKLOADS)}")
    w = workload.WORKLOADS[_WORKLOAD.value]
    if _VOCAB.value:
        w = workload.with_vocab(w, _VOCAB.value)
    if _STEPS.value <= _WARMUP.value:
        raise app.UsageError(f"--steps={_STEPS.value} must exceed --warmup={_WARMUP.value}")
    peers = [("pojax", sys.executable)] + [parse_peer(p) for p in _PEERS.value]
    paths = workload.prepare(w, _ROOT.value)
    runs: dict[str, list] = {name: [] for name, _ in peers}
    for r in range(_ROUNDS.value):
        for name, python in peers[r % len(peers):] + peers[:r % len(peers)]:  # rotate the order
            out = os.path.join(_ROOT.value, f"{w.name}_{name}_{r}.json")
            runs[name].append(run_one(command(name, python, w, paths, _STEPS.value, out), out))
            print(f"round {r}: {name}: {summarize(runs[name][-1:], w, _WARMUP.value)}", flush=True)
    frameworks = {name: summarize(rs, w, _WARMUP.value) for name, rs in runs.items()}
    base = frameworks["pojax"].get("s_per_step")
    for r in frameworks.values():
        if "error" not in r and base:
            r["pojax_speedup"] = r["s_per_step"] / base
    gflop = flops.dpo_step_flops(w) / 1e9
    peak = flops.matmul_flops_per_s() / 1e9
    result = {"hardware": _HARDWARE.value or hardware_name(), "workload": w.__dict__, "rounds": _ROUNDS.value,
              "steps": _STEPS.value, "warmup": _WARMUP.value, "step_gflop": gflop, "matmul_gflops": peak,
              "pojax_step_gflop": flops.pojax_step_flops(w) / 1e9,
              "floor_s_per_step": gflop / peak, "frameworks": frameworks}
    write_results(result, w.name, markdown(result))


def write_results(result: dict, name: str, md: str) -> None:
    """<hardware>_<name>.json / .md under --out, and the table on stdout."""
    os.makedirs(_OUT.value, exist_ok=True)
    tag = f"{result['hardware'].split(' (')[0].replace(' ', '_').replace('/', '_')}_{name}"
    with open(os.path.join(_OUT.value, f"{tag}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(_OUT.value, f"{tag}.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    app.run(main)
