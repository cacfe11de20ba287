"""Memory of a DPO step, pojax beside its peers, side by side in one run: peak and idle RSS,
s/step, and for pojax XLA's own accounting of the compiled step (workdir/memory.json,
pojax.train.memory).

    python -m experiments.bench.memory --workload=medium --steps=3 \\
        --run=pojax --run=pojax:--config.model.remat=full --run=trl --run=trl:--no_gradient_checkpointing \\
        --run=tunix@/tmp/peers/tunix/bin/python --run=easydel@/tmp/peers/easydel/bin/python

A run is ``framework[@python][:arg,arg,...]``: the framework's peer script
(experiments/bench/peers) on the workload's files, with those extra arguments (pojax: ``--config.*``
overrides; TRL: ``--no_gradient_checkpointing``, ``--precompute_ref_log_probs``). Runs go one
at a time, each in its own process, whose resident set (RSS, /proc/PID/status) is sampled every
``--sample_s`` seconds. Reported per run: peak RSS, the RSS after the first step (the lowest
sample between the first step's end and the run's end: what stays alive between steps), s/step
(median after the first step) and the loss at step 1.

pojax's rows add the per-device accounting: parameters, optimizer state, reference, the compiled
step's arguments / outputs / aliased / temporaries / peak, live JAX arrays and RSS after step 1;
gradients = parameters (same shapes and dtype), activations and other temporaries = the step's
temporaries − gradients, host-side = RSS − live arrays (Python, libraries, compiled code, the
input pipeline, allocator slack). Results go to ``--out`` as <hardware>_memory_<workload>.json / .md.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from absl import app, flags

from experiments.bench import compare, workload

# --workload, --steps, --data_dir, --out and --hardware are compare.py's flags (defaults: medium, 3 steps)
flags.FLAGS.set_default("workload", "medium")
flags.FLAGS.set_default("steps", 3)
_WORKLOAD, _STEPS, _ROOT, _OUT, _HARDWARE = compare._WORKLOAD, compare._STEPS, compare._ROOT, compare._OUT, compare._HARDWARE
_RUNS = flags.DEFINE_multi_string("run", ["pojax", "pojax:--config.model.remat=full", "trl",
                                          "trl:--no_gradient_checkpointing"], "framework[@python][:arg,arg]")
_LAYERS = flags.DEFINE_integer("layers", 0, "override the workload's depth (0 = its own): the largest-model search")
_SAMPLE = flags.DEFINE_float("sample_s", 0.5, "RSS sampling period")

GiB = 2**30


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    """'name[@python][:a,b]' → (name, python, extra args)."""
    head, _, extra = spec.partition(":")
    name, _, python = head.partition("@")
    if name not in compare.PEER_SCRIPTS:
        raise app.UsageError(f"--run={spec}: unknown framework {name!r}; one of {', '.join(compare.PEER_SCRIPTS)}")
    return name, python or sys.executable, [a for a in extra.split(",") if a]


def command(spec: str, w: workload.Workload, paths: dict, steps: int, out: str) -> list[str]:
    """The command line of run ``spec`` on workload ``w``'s files, writing ``out``."""
    name, python, extra = parse_run(spec)
    cmd = compare.command(name, python, w, paths, steps, out)
    return cmd + ([f"--extra={a}" for a in extra] if name == "pojax" else extra)


def rss_bytes(pid: int) -> int | None:
    """Resident set of ``pid`` and its children (the pojax runner re-executes itself), bytes."""
    total, found = 0, False
    for p in [pid] + _children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        found = True
        except OSError:
            continue
    return total if found else None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def run_sampled(cmd: list[str], out: str, period: float) -> dict:
    """Runs ``cmd`` (a peer runner writing ``out``) while sampling its RSS; the runner's result
    plus ``rss`` = [(seconds since start, bytes)]."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(compare.HERE)), TOKENIZERS_PARALLELISM="false")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    samples, t0 = [], time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            r = rss_bytes(proc.pid)
            if r is not None:
                samples.append((time.monotonic() - t0, r))
            time.sleep(period)
    finally:  # an interrupted bench (Ctrl-C, timeout -s INT) takes its run with it
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    if proc.returncode != 0 or not os.path.exists(out):
        return {"error": "".join(log)[-3000:], "returncode": proc.returncode, "rss": samples}
    with open(out) as f:
        result = json.load(f)
    result["rss"] = samples
    return result


def summarize(r: dict) -> dict:
    if "error" in r:
        return {"error": r["error"], "returncode": r.get("returncode")}
    times = r["step_times"]
    peak = max([r["peak_rss_gib"]] + [b / GiB for _, b in r["rss"]])
    between = [x for x in r.get("rss_between_steps_gib") or [] if x is not None]
    out = {"s_per_step": statistics.median(times[1:]) if len(times) > 1 else times[0],
           "loss_first": r["losses"][0], "peak_rss_gib": peak,
           # pojax saves a checkpoint after its last step (TRL's runner saves none): its peak before
           # that save is training's peak; TRL's whole-run peak is
           "peak_rss_steps_gib": r.get("peak_rss_steps_gib") or peak,
           "idle_rss_gib": min(between) if between else None}  # the runners' own reading between steps
    if r.get("memory"):
        out["memory"] = r["memory"]
    return out


def accounting(mem: dict) -> list[tuple[str, float]]:
    """pojax's memory.json (one stage) as (part, GiB) rows."""
    d, h = mem["device"], mem["host"]
    rows = [("parameters", d["params"]), ("gradients (= parameters; step temporary)", d["params"]),
            ("optimizer state", d["opt_state"]), ("reference", d["reference"]),
            ("activations and other step temporaries", d.get("step_temporaries", 0) - d["params"]),
            ("compiled step peak (arguments + outputs − aliased + temporaries)", d.get("step_peak", 0)),
            ("live JAX arrays after step 1", h["live_arrays"]), ("RSS after step 1", h.get("rss", 0)),
            ("host-side (RSS − live arrays)", h.get("rss", 0) - h["live_arrays"])]
    return [(k, v / GiB) for k, v in rows]


def architecture(w: dict, depth: str) -> str:
    """'896d × 24 layers, 14 / 2 heads, intermediate 4864, vocab 151936, tied embeddings' of a
    workload's fields, with ``depth`` for the '× 24 layers' part."""
    return (f"{w['hidden']}d{depth}, {w['heads']} / {w['kv_heads']} heads, intermediate {w['intermediate']}, "
            f"vocab {w['vocab']}{', tied embeddings' if w.get('tied') else ''}")


def markdown(result: dict) -> str:
    w = result["workload"]
    depth = f" × {w['layers']} layers"
    lines = [f"# Memory of a DPO step, workload {w['name']} ({result['hardware']})", "",
             f"{architecture(w, depth)} "
             f"({result['params_m']:.0f}M parameters); {w['pairs']} pairs of {w['prompt_len']} + "
             f"{w['completion_len']} tokens, fp32, sigmoid DPO with a frozen reference, AdamW; "
             f"{result['steps']} steps per run, RSS sampled every {result['sample_s']} s.", "",
             "Peak RSS in training: up to the end of the last step (pojax's run then saves its checkpoint, "
             "whose host copy of the state is in the whole-run peak; TRL's runner saves nothing).", "",
             "| run | s/step | peak RSS in training GiB | peak RSS whole run GiB | RSS between steps GiB | loss step 1 |",
             "|---|---|---|---|---|---|"]
    for name, r in result["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'].strip().splitlines()[-1][:100] if r['error'].strip() else ''} |||||")
            continue
        idle = f"{r['idle_rss_gib']:.2f}" if r["idle_rss_gib"] is not None else "–"
        lines.append(f"| {name} | {r['s_per_step']:.2f} | {r['peak_rss_steps_gib']:.2f} | {r['peak_rss_gib']:.2f} | {idle} "
                     f"| {r['loss_first']:.6f} |")
    for name, r in result["runs"].items():
        if "memory" in r and "train" in r["memory"]:
            lines += ["", f"## {name}: where the memory goes (per device, XLA's memory analysis of the compiled step)", "",
                      "| part | GiB |", "|---|---|"]
            lines += [f"| {k} | {v:.2f} |" for k, v in accounting(r["memory"]["train"])]
    return "\n".join(lines) + "\n"


def main(argv) -> None:
    del argv
    w = workload.WORKLOADS[_WORKLOAD.value]
    if _LAYERS.value:
        w = dataclasses.replace(w, layers=_LAYERS.value, name=f"{w.name}_l{_LAYERS.value}")
    paths = workload.prepare(w, _ROOT.value)
    runs = {}
    for spec in _RUNS.value:
        out = os.path.join(_ROOT.value, f"{w.name}_memory_{len(runs)}.json")
        runs[spec] = summarize(run_sampled(command(spec, w, paths, _STEPS.value, out), out, _SAMPLE.value))
        print(f"{spec}: {json.dumps({k: v for k, v in runs[spec].items() if k != 'memory'})}", flush=True)
    result = {"hardware": _HARDWARE.value or compare.hardware_name(), "workload": w.__dict__, "steps": _STEPS.value,
              "sample_s": _SAMPLE.value, "params_m": w.params() / 1e6, "runs": runs}
    compare.write_results(result, f"memory_{w.name}", markdown(result))


if __name__ == "__main__":
    app.run(main)
