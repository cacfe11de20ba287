"""Where a training stage's memory goes, per device: the train state (parameters, optimizer
state), the frozen variables, the reference model, and XLA's own figures for the compiled step
(arguments, outputs, the part of the outputs aliased to donated arguments, temporaries, code).

The step is compiled ahead of time (``CompiledStep``: ``jit(...).lower(...).compile()``, one
executable per set of argument shapes, as jit's own cache keeps them), so its
``memory_analysis()`` comes with the compile the run needs anyway. After its first step a stage
writes the report (``report``) to ``workdir/memory.json`` under the stage's name and logs one
line; the peak a step needs on a device is

    peak = arguments + outputs − aliased + temporaries

(XLA's buffer assignment: a donated argument's buffer is reused for its output). On a CPU the
devices are host memory, so ``host`` adds what the process holds besides JAX's arrays: the
resident set (RSS) now and at its peak, and the bytes of every live JAX array.
"""
from __future__ import annotations

import json
import resource
from typing import Any

import jax
import numpy as np

from pojax import fs, host

GiB = 2**30


def tree_bytes(tree, device=None) -> int:
    """Bytes of ``tree``'s arrays held on ``device`` (default: the first addressable device of
    each array), i.e. one device's share of a sharded tree. Non-array leaves count 0."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            shards = leaf.addressable_shards
            if not shards:
                continue
            d = device if device is not None else shards[0].device
            total += sum(s.data.nbytes for s in shards if s.device == d)
        elif hasattr(leaf, "nbytes"):
            total += int(leaf.nbytes)
    return total


def compiled_memory(compiled) -> dict[str, int]:
    """XLA's memory analysis of a compiled step, per device, in bytes: arguments, outputs,
    aliased (outputs written into donated arguments' buffers), temporaries, generated code, and
    peak = arguments + outputs − aliased + temporaries. Empty where the backend gives none."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    out = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
           "aliased": stats.alias_size_in_bytes, "temporaries": stats.temp_size_in_bytes,
           "code": stats.generated_code_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    for name in ("argument", "output", "temp"):  # host memory of a device program (offloaded state), where reported
        value = getattr(stats, f"host_{name}_size_in_bytes", 0)
        if value:
            out[f"host_{name}s" if name != "temp" else "host_temporaries"] = value
    return out


def _signature(args) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), np.result_type(x)) for x in leaves)


class CompiledStep:
    """``jitted`` (a ``jax.jit`` function) compiled ahead of time, one executable per argument
    signature (tree structure, shapes, dtypes). ``compiled`` is the first executable: the one a
    training stage runs every step when its batches keep their shapes.

    After compiling a step whose arguments hold at least ``RELEASE_ABOVE_BYTES``, the compiler's
    freed heap goes back to the OS (``host.release_free_memory``: GiBs at 0.5B parameters); below
    that there is little to return and its ``gc.collect`` (0.3 s in a test process) would dominate."""

    RELEASE_ABOVE_BYTES = 256 << 20

    def __init__(self, jitted):
        self.jitted = jitted
        self.executables: dict[Any, Any] = {}
        self.compiled = None

    def __call__(self, *args):
        key = _signature(args)
        exe = self.executables.get(key)
        if exe is None:
            exe = self.executables[key] = self.jitted.lower(*args).compile()
            self.compiled = self.compiled or exe
            if sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(args)) >= self.RELEASE_ABOVE_BYTES:
                host.release_free_memory()
        return exe(*args)


def _memory_kind(tree) -> str | None:
    """The memory kind of ``tree``'s first array ("device", "pinned_host", ...)."""
    arrays = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    return arrays[0].sharding.memory_kind if arrays else None


def host_bytes() -> dict[str, int]:
    """The process's resident set now and at its peak, and the bytes of all live JAX arrays
    (summed over their addressable shards)."""
    out = {"rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        with open("/proc/self/statm") as f:
            out["rss"] = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        pass
    out["live_arrays"] = sum(s.data.nbytes for a in jax.live_arrays() for s in a.addressable_shards)
    return out


def report(compiled, state, frozen=None, reference=None) -> dict:
    """One stage's memory figures (bytes): ``device`` (per device: params, opt_state, loss_state,
    frozen, reference, and the compiled step's figures as ``step_*``) and ``host``."""
    device = {"params": tree_bytes(state.params), "opt_state": tree_bytes(state.opt_state),
              "loss_state": tree_bytes(state.loss_state), "frozen": tree_bytes(frozen),
              "reference": tree_bytes(reference), "opt_state_memory_kind": _memory_kind(state.opt_state)}
    if compiled is not None:
        device.update({f"step_{k}": v for k, v in compiled_memory(compiled).items()})
    return {"device": device, "host": host_bytes()}


def summary(stage: str, rep: dict) -> str:
    """One log line of a report, in GiB."""
    d, h = rep["device"], rep["host"]
    g = lambda b: f"{b / GiB:.2f}"
    parts = [f"params {g(d['params'])}", f"optimizer {g(d['opt_state'])}"]
    if d["reference"]:
        parts.append(f"reference {g(d['reference'])}")
    if d["frozen"]:
        parts.append(f"frozen {g(d['frozen'])}")
    if "step_peak" in d:
        parts.append(f"step temporaries {g(d['step_temporaries'])}, step peak {g(d['step_peak'])}")
    parts.append(f"host RSS {g(h.get('rss', 0))} (peak {g(h['rss_peak'])})")
    return f"{stage}: memory per device (GiB): " + ", ".join(parts)


def write(workdir: str, stage: str, rep: dict) -> None:
    """Adds ``rep`` to workdir/memory.json under ``stage`` (process 0 writes)."""
    if jax.process_index() != 0:
        return
    path = fs.join(workdir, "memory.json")
    reports = json.loads(fs.read_text(path)) if fs.exists(path) else {}
    reports[stage] = rep
    fs.write_text(path, json.dumps(reports, indent=1))
