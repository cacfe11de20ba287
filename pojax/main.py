"""``python -m pojax.main --config=configs/<recipe>.py [--workdir=DIR] [--config.key=value ...]``.

Loads the recipe with ml_collections ``config_flags``, resolves the workdir (default
``workdirs/run``) to an absolute path once, checks the config, its paths and, for a training task
on an existing workdir, that the stored config.json allows resuming (pojax.preflight): any
mistake exits with status 2 and one line on stderr naming the key, before a model is built.
Then it writes ``DIR/config.json``, dispatches the task from ``TASK_RUNNERS`` and says where the
outputs went.

Exit status: 0 done; 2 bad input (config key, path, data row, checkpoint); 3 a non-finite step
with ``train.nan_policy=stop``; 74 a checkpoint could not be written (the previous one stays the
latest); 75 preempted (SIGTERM / SIGUSR1: the step was checkpointed, relaunch to resume; the
launchers in experiments/backends requeue it); 76 the step watchdog (``train.step_timeout_s``)
found a step stuck. A process lost from a multi-host run ends the others through jax.distributed
(``distributed.heartbeat_timeout_s``) with a non-zero status of JAX's.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
    # `python -m pojax.main` on a CPU: once, before the heavy imports, re-execute with glibc's huge
    # pages for large blocks (pojax.host: each step's XLA buffer faults in 2 MiB pages, not 4 KiB),
    # and XLA:CPU's memory-lean scheduler (pojax.host.cpu_xla_flags)
    from pojax import host

    host.prepare_process()

from absl import app, flags, logging
from ml_collections import config_flags

from pojax.config import ConfigError, is_online, validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config(), e.g. configs/quickstart.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default workdirs/run), local or gs://bucket/path: config.json, metrics.jsonl, "
                               "checkpoints/, plots/.")

def _task(module: str, name: str):
    """A runner that imports its task lazily (heavy imports only when a task runs) and prints
    the results table."""

    def run(config, workdir):
        import importlib

        results = getattr(importlib.import_module(module), name)(config, workdir)
        width = max(map(len, results))
        print("\n".join(f"{k:<{width}}  {v}" for k, v in results.items()))

    return run


# task name -> callable(config, workdir); the other tasks land with their issues.
TASK_RUNNERS: dict = {
    "train": lambda config, workdir: (_task("pojax.train.online", "run_online") if is_online(config)
                                      else _task("pojax.train.run", "run_train"))(config, workdir),
    "sft": _task("pojax.train.tasks", "run_sft"),
    "pretrain": _task("pojax.train.tasks", "run_pretrain"),
    "eval": _task("pojax.train.tasks", "run_eval"),
    "export": _task("pojax.train.tasks", "run_export"),
    "diffpo": _task("pojax.train.diffpo", "run_diffpo"),
}


def _user_errors() -> tuple:
    """The exception classes pojax raises on bad user input (config, paths, data, checkpoints):
    each reaches the user as one line on stderr and exit status 2."""
    from pojax.data.formats import DataError
    from pojax.data.packing import PackingError
    from pojax.eval.tasks import FewShotError
    from pojax.fs import WorkdirError
    from pojax.models.hf_io import CheckpointError

    return ConfigError, DataError, PackingError, FewShotError, WorkdirError, CheckpointError


def _summary(config, workdir: str) -> str:
    """The one line printed before a run starts (the whole resolved config is in config.json)."""
    model = config.model.path or f"random {config.model.family}"
    data = config.data.path or config.data.format
    return f"pojax: task {config.task}, loss {config.loss.name}, model {model}, data {data}; run directory {workdir}"


def main(argv) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        print("pojax: --config is required (e.g. --config=configs/quickstart.py)", file=sys.stderr)
        return 2
    from pojax import fs, preflight

    # once: every task and orbax see one absolute path (a TRL YAML's output_dir when --workdir is not given)
    workdir = preflight.absolute_workdir(_WORKDIR.value or config.get("output_dir") or None)
    try:  # everything a user can get wrong is checked here, before any model is built or compiled
        validate(config)
        fs.check_workdir(workdir)  # gs:// without its client library fails here, not mid-run
        from pojax import hub

        hub_paths = hub.resolve(config)  # Hub ids → their snapshots in the Hub cache (downloaded unless offline)
        preflight.check_paths(config)
        if config.logging.wandb:
            from pojax.train import wandb_log

            wandb_log.check_installed()
        if config.task == "eval" and config.eval.lm_eval_tasks:
            preflight.check_lm_eval()
        notice = preflight.drop_unused_reference(config)
    except (ConfigError, fs.WorkdirError) as e:
        print(f"pojax: {e}", file=sys.stderr)
        return 2
    from pojax.distributed import maybe_initialize

    maybe_initialize(config)  # before any JAX computation
    import jax

    try:
        if config.task in preflight.TRAINING_TASKS + ("eval",):
            preflight.mesh_and_rules(config)  # the devices exist now: a mesh that does not fit them stops here
        resumes = config.task in preflight.TRAINING_TASKS and preflight.check_resume(config, workdir)
    except ConfigError as e:
        print(f"pojax: {e}", file=sys.stderr)
        return 2
    lead = jax.process_index() == 0  # process 0 prints and writes the run's files
    if lead:
        if notice:
            print(f"pojax: {notice}")
        print(_summary(config, workdir) + (" (resuming)" if resumes else ""))
        logging.info("config:\n%s", config.to_json_best_effort(indent=2, sort_keys=True))
        fs.makedirs(workdir)
        fs.write_text(preflight.config_file(config, workdir), config.to_json_best_effort(indent=2, sort_keys=True))
    runner = TASK_RUNNERS.get(config.task)
    if runner is None:
        logging.warning("config is valid; task %r is not implemented yet, so nothing was run", config.task)
        print(f"pojax: config valid; task {config.task!r} is not implemented yet")
        return 0
    from pojax.train import preemption
    from pojax.train.checkpoint import EXIT_CHECKPOINT_WRITE, CheckpointWriteError
    from pojax.train.step import NonFiniteError

    try:
        with preemption.notice(config.train.preemption_signals if config.task in preflight.TRAINING_TASKS else ""):
            results = runner(config, workdir)
    except preemption.Preempted as e:  # SIGTERM / SIGUSR1: this step is checkpointed; relaunching resumes it
        if config.logging.wandb:
            from pojax.train import wandb_log

            wandb_log.finish(workdir, teardown=True)
        if lead:
            print(f"pojax: {e}", file=sys.stderr)
        return preemption.EXIT_PREEMPTED
    except _user_errors() as e:  # bad config, path, data or checkpoint: one line naming key / file, row, field
        print(f"pojax: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:  # train.nan_policy = "stop": the last good checkpoint is the latest
        print(f"pojax: {e}", file=sys.stderr)
        return 3
    except CheckpointWriteError as e:  # storage fault: the previous checkpoint stays the latest
        print(f"pojax: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT_WRITE
    if config.logging.wandb:
        from pojax.train import wandb_log

        wandb_log.finish(workdir, results if isinstance(results, dict) else None, teardown=True)
    if lead:
        print(f"pojax: outputs in {workdir}")
    return 0


def _config_file_problem(argv) -> str | None:
    """The one-line error for a ``--config`` recipe file that does not exist (config_flags
    would only fail when the config is first read, with a traceback)."""
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg in ("--config", "-config") and i + 1 < len(args):
            arg = f"--config={args[i + 1]}"
        if arg.startswith(("--config=", "-config=")):
            path = arg.split("=", 1)[1].split(":", 1)[0]  # config_flags: FILE[:ARGUMENT]
            if not os.path.isfile(path):
                return (f"pojax: --config={path}: no such file (run from the pojax checkout, or pass the recipe's "
                        f"full path, e.g. --config=configs/quickstart.py)")
    return None


def _parse_flags(argv):
    """absl's flag parsing, with a bad --config.<key> override or --config file reported in one
    line."""
    problem = _config_file_problem(argv)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # config_flags: an override of a key that does not exist
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        # config_flags wraps a KeyError's repr in an AttributeError: unescape it to plain text.
        detail = str(e.args[0] if e.args else e).replace("\\'", "'").replace("\\n", "\n")
        detail = "; ".join(part.strip("\"' ") for part in detail.splitlines())
        print(f"pojax: unknown config key in {overrides}: {detail}", file=sys.stderr)
        sys.exit(2)
    except (flags.Error, TypeError, ValueError) as e:
        cause = e  # a recipe's get_config raising ConfigError: config_flags and absl re-raise it as context
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__context__
        print(f"pojax: {cause}" if cause is not None else f"pojax: bad flag: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
