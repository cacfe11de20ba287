"""Step time and peak memory of pojax's DPO step as sequence length, vocabulary and batch grow:
pojax's default path (``likelihood.chunk_size`` = --chunk tokens, the default vocabulary tile
``likelihood.vocab_chunk_size``: never a full [B, T, V] fp32 logits tensor, nor [B, C, V]; each
prompt computed once, ``likelihood.shared_prompt``) against the naive path (chunk_size = the
sequence length, vocab_chunk_size = 0 and shared_prompt off: one row per sequence, the full
logits, as a framework without either computes them).

    python -m experiments.bench.scaling [--axes=seq,vocab,batch] [--steps=8 --warmup=3] [--out=...]

One dimension varies at a time from the base point (the tiny workload's model, 4 pairs,
256 tokens, vocab 32k). Each point is a fresh process (experiments/bench/peers/pojax_dpo.py);
peak memory is that process's peak RSS, so it includes the JAX runtime's fixed ~0.5 GiB.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys

from absl import app, flags

from experiments.bench import compare, workload

_AXES = flags.DEFINE_list("axes", ["seq", "vocab", "batch"], "dimensions to sweep: seq, vocab, batch")
_CHUNK = flags.DEFINE_integer("chunk", 128, "chunk_size of the chunked path (tokens)")
# --steps, --warmup, --data_dir, --out: compare's flags (this module imports it)
_STEPS, _WARMUP, _ROOT, _OUT = compare._STEPS, compare._WARMUP, compare._ROOT, compare._OUT

BASE = dataclasses.replace(workload.WORKLOADS["tiny"], name="scale", vocab=32768, pairs=4, prompt_len=128,
                           completion_len=128)
GRID = {"seq": ("prompt_len", [64, 128, 256, 512, 1024]),  # S = 2 × prompt_len: 128 … 2048
        "vocab": ("vocab", [2048, 8192, 32768, 131072]),
        "batch": ("pairs", [1, 2, 4, 8, 16])}


def point(axis: str, value: int) -> workload.Workload:
    field, _ = GRID[axis]
    w = dataclasses.replace(BASE, **{field: value})
    if field == "prompt_len":
        w = dataclasses.replace(w, completion_len=value)
    return dataclasses.replace(w, name=f"scale_v{w.vocab}_p{w.pairs}_s{w.seq_len}")


def measure(w: workload.Workload, chunk: int, vocab_chunk: int | None = None, shared_prompt: bool = True) -> dict:
    """One fresh pojax process at sequence chunk ``chunk`` and vocabulary tile ``vocab_chunk``
    (None: the config's default; 0: the whole vocabulary), prompts shared or not."""
    paths = workload.prepare(w, _ROOT.value)
    out = os.path.join(_ROOT.value, f"{w.name}_c{chunk}_v{vocab_chunk}_sp{int(shared_prompt)}.json")
    extra = [f"--extra=--config.likelihood.chunk_size={chunk}",
             f"--extra=--config.likelihood.shared_prompt={shared_prompt}"]
    if vocab_chunk is not None:
        extra.append(f"--extra=--config.likelihood.vocab_chunk_size={vocab_chunk}")
    cmd = compare.command("pojax", sys.executable, w, paths, _STEPS.value, out) + extra
    r = compare.run_one(cmd, out)
    if "error" in r:
        return {"error": r["error"].strip().splitlines()[-1] if r["error"].strip() else "failed"}
    return {"s_per_step": statistics.median(r["step_times"][_WARMUP.value:]), "peak_rss_gib": r["peak_rss_gib"]}


def write_results(rows: list, chunk: int, out: str) -> str:
    """scaling.json and scaling.md under ``out`` (rewritten after every point: a run cut short
    keeps what it measured); returns the markdown table."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump({"hardware": compare.hardware_name(), "chunk": chunk, "rows": rows}, f, indent=2)
    lines = ["| axis | seq | vocab | pairs | chunked s/step | naive s/step | chunked peak GiB | naive peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, k, spec: format(r[k], spec) if k in r else r.get("error", "")[:40]
    for r in rows:
        c, n = r["chunked"], r["naive"]
        lines.append(f"| {r['axis']} | {r['seq_len']} | {r['vocab']} | {r['pairs']} | {fmt(c, 's_per_step', '.3f')} | "
                     f"{fmt(n, 's_per_step', '.3f')} | {fmt(c, 'peak_rss_gib', '.2f')} | {fmt(n, 'peak_rss_gib', '.2f')} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "scaling.md"), "w") as f:
        f.write(f"# pojax DPO step scaling, default (sequence chunk {chunk}, default vocabulary tile, shared prompts) "
                f"vs full logits, one row per sequence "
                f"({compare.hardware_name()})\n\n")
        f.write(table)
    return table


def main(argv) -> None:
    del argv
    unknown = set(_AXES.value) - set(GRID)
    if unknown:
        raise app.UsageError(f"--axes: unknown {sorted(unknown)}; choose from {', '.join(GRID)}")
    rows = []
    for axis in _AXES.value:
        for value in GRID[axis][1]:
            w = point(axis, value)
            rows.append({"axis": axis, "seq_len": w.seq_len, "vocab": w.vocab, "pairs": w.pairs,
                         "chunked": measure(w, _CHUNK.value), "naive": measure(w, w.seq_len, 0, shared_prompt=False)})
            print(json.dumps(rows[-1]), flush=True)
            table = write_results(rows, _CHUNK.value, _OUT.value)
    print(table)


if __name__ == "__main__":
    app.run(main)
