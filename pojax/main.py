"""``python -m pojax.main --config=configs/<recipe>.py [--workdir=DIR] [--config.key=value ...]``.

Loads the recipe with ml_collections ``config_flags``, validates it (a bad key exits with
status 2 and one line on stderr naming the key), prints it and writes ``DIR/config.json``.
Tasks are dispatched from ``TASK_RUNNERS``; the trainer and the other tasks land with their
issues, until then the run stops after validation and says so.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and os.path.abspath(sys.argv[0]) == os.path.abspath(__file__):
    # `python -m pojax.main` on a CPU: once, before the heavy imports, re-execute with glibc's huge
    # pages for large blocks (pojax.host: each step's XLA buffer faults in 2 MiB pages, not 4 KiB)
    from pojax import host

    host.reexec_with_huge_pages()

from absl import app, flags, logging
from ml_collections import config_flags

from pojax.config import ConfigError, is_online, validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config(), e.g. configs/quickstart.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory, local or gs://bucket/path: config.json, metrics.jsonl, "
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


def main(argv) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        print("pojax: --config is required (e.g. --config=configs/quickstart.py)", file=sys.stderr)
        return 2
    from pojax import fs

    try:
        validate(config)
        fs.check_workdir(_WORKDIR.value)  # gs:// without its client library fails here, not mid-run
    except (ConfigError, fs.WorkdirError) as e:
        print(f"pojax: {e}", file=sys.stderr)
        return 2
    from pojax.distributed import maybe_initialize

    maybe_initialize(config)  # before any JAX computation
    print(config.to_json_best_effort(indent=2, sort_keys=True))
    workdir = _WORKDIR.value
    import jax

    if workdir and jax.process_index() == 0:  # process 0 writes the run's files
        fs.makedirs(workdir)
        fs.write_text(fs.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))
    runner = TASK_RUNNERS.get(config.task)
    if runner is None:
        logging.warning("config is valid; task %r is not implemented yet, so nothing was run", config.task)
        print(f"pojax: config valid; task {config.task!r} is not implemented yet (see the issue tracker)")
        return 0
    from pojax.data.formats import DataError
    from pojax.train.step import NonFiniteError

    try:
        runner(config, workdir)
    except (ConfigError, DataError) as e:  # bad config or bad data: one line naming key / file, row, field
        print(f"pojax: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:  # train.nan_policy = "stop": the last good checkpoint is the latest
        print(f"pojax: {e}", file=sys.stderr)
        return 3
    return 0


def _parse_flags(argv):
    """absl's flag parsing, with a bad --config.<key> override reported in one line."""
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
        print(f"pojax: bad flag: {e}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
