"""Sweeps: one Python file per study, read by experiments.launch and experiments.report.

A sweep file is a module with

    base = "configs/quickstart.py"        # the recipe every run starts from (path from the project root)
    fixed = {"train.max_steps": 300}      # optional: overrides shared by every run
    grid = {"loss.name": ["sigmoid", "ipo"], "train.seed": [0, 1, 2]}   # optional: the product of these
    runs = [{"loss.name": "simpo", "reference.mode": "none"}, ...]       # optional: a list of override sets
    name = "gym_losses"                   # optional: default = the file's stem
    slice = "v5p-64"; gcs = "gs://bucket/dir"; zone = "us-east5-a"; project = "my-project"   # tpu-vm backend
    nodes = 2; gpus_per_node = 8; partition = "gpu"                                          # slurm backend

and each run is ``runs × grid`` (either may be absent) with ``fixed`` underneath. A run's name
comes from the overrides that vary across the sweep (``loss.name=ipo, loss.beta=0.5,
train.seed=1`` → ``ipo-beta0.5-seed1``): filesystem-safe and unique within the sweep.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # directory name under the sweep's root
    overrides: dict  # dotted config key -> value (fixed ones included)
    swept: dict  # the overrides that vary across the sweep (what the name and report show)


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    base: str  # recipe path, relative to the project root or absolute
    runs: tuple
    path: str = ""  # the sweep file
    slice: str = ""  # TPU accelerator type, e.g. "v5p-64"
    gcs: str = ""  # gs:// root of the runs' workdirs on TPU VMs
    zone: str = ""
    project: str = ""
    runtime_version: str = ""  # TPU VM software version; "" = the default for the slice's generation
    nodes: int = 1  # slurm: nodes per run
    gpus_per_node: int = 8  # slurm: GPUs per node (one process per node)
    partition: str = ""  # slurm partition; "" = the cluster's default

    def select(self, only: str | None) -> list:
        """The runs named in ``only`` (comma-separated), or all of them."""
        if not only:
            return list(self.runs)
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        known = {r.name: r for r in self.runs}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ValueError(f"--only: no run named {', '.join(missing)} in sweep {self.name!r}; "
                             f"runs: {', '.join(known)}")
        return [known[n] for n in wanted]


def format_value(value) -> str:
    """A value as config_flags parses it on the command line (--config.key=<this>)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("._") or "_"


def name_part(key: str, value) -> str:
    """One override's piece of a run name: ``loss.name=ipo`` → ``ipo``, ``loss.beta=0.5`` →
    ``beta0.5``, ``reference.mode=none`` → ``mode-none``... (a ``*.name`` key shows its value only)."""
    leaf = key.rsplit(".", 1)[-1]
    shown = format_value(value)
    if leaf == "name":
        return _slug(shown)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _slug(f"{leaf}{shown}")
    return _slug(f"{leaf}-{shown}")


def run_names(swept: list) -> list:
    """Names of runs given their varying overrides (dicts), unique: repeats get -2, -3, ..."""
    names, seen = [], {}
    for overrides in swept:
        name = "-".join(name_part(k, v) for k, v in overrides.items()) or "run"
        name = name[:120]  # file-name length limits
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    if len(set(names)) != len(names):  # a suffixed name that collides with a literal one
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    return names


def expand(grid: dict | None = None, runs: list | None = None, fixed: dict | None = None) -> list:
    """Runs of ``runs × grid`` over ``fixed``. Only keys whose value varies across the runs
    name them, in the order they are first given, less those the other keys already determine
    (a reference.mode set per loss.name)."""
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    sets = [dict(r, **g) for r in (runs or [{}]) for g in combos]
    keys = list(dict.fromkeys(k for s in sets for k in s))
    varying = [k for k in keys if len({format_value(s.get(k)) for s in sets}) > 1 or len(sets) == 1]
    swept = [{k: s[k] for k in varying if k in s} for s in sets]
    shown = list(varying)
    for k in reversed(varying):  # leave out keys the others already determine (reference.mode by loss.name)
        others = [j for j in shown if j != k]
        rest = [tuple(format_value(s.get(j)) for j in others) for s in sets]
        if len(sets) > 1 and len(set(rest)) == len(sets) and all(any(j in s for j in others) for s in sets):
            shown.remove(k)
    named = [{k: s[k] for k in shown if k in s} for s in sets]
    return [Run(name, dict(fixed or {}, **s), sw) for name, s, sw in zip(run_names(named), sets, swept)]


def load(path: str) -> Sweep:
    """The sweep defined by the Python file at ``path``."""
    spec = importlib.util.spec_from_file_location(f"sweep_{_slug(os.path.basename(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--sweep={path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not getattr(module, "base", ""):
        raise ValueError(f"sweep {path}: defines no `base` recipe (e.g. base = 'configs/quickstart.py')")
    fields = {f.name for f in dataclasses.fields(Sweep)} - {"name", "base", "runs", "path"}
    return Sweep(name=getattr(module, "name", os.path.splitext(os.path.basename(path))[0]), base=module.base,
                 runs=tuple(expand(getattr(module, "grid", None), getattr(module, "runs", None),
                                   getattr(module, "fixed", None))),
                 path=path, **{f: getattr(module, f) for f in fields if hasattr(module, f)})


def main_args(sweep: Sweep, run: Run, workdir: str) -> list:
    """pojax.main's arguments (after ``python -m pojax.main``) for one run."""
    return [f"--config={sweep.base}", f"--workdir={workdir}"] + [
        f"--config.{k}={format_value(v)}" for k, v in run.overrides.items()]
