"""Test set-up, before JAX initializes: 8 host CPU devices for mesh tests, and one persistent
XLA compilation cache for the whole test run, and XLA's fast-compile flags (tests/xla.py).

The cache (JAX_COMPILATION_CACHE_DIR) is a fresh directory per run, made by the controlling
pytest process and inherited by its xdist workers and by every ``python -m pojax.main`` a test
starts, so a program that many tests compile (the quickstart's train step, on the same shapes)
compiles once per run: a tiny ``pojax.main`` run takes 13 s instead of 37 s on 2 cores. Every
program is cached, however fast it compiled: each process otherwise compiles again the ~60 small
ones (parameter init, eager ops, the learning-rate schedule) that take 0.04-0.2 s each; a
repeated tiny run fell from 18 s to 14 s with them cached. Cached
executables are the programs a cold compile makes (XLA keys them by HLO, flags and devices), so
bit-for-bit comparisons still compare the same programs. A run that sets the variable itself
keeps its own cache; the directory is removed when the run ends.
"""
import os
import shutil
import tempfile

from tests.xla import FAST_COMPILE

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in flags:
    flags += " " + FAST_COMPILE
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the controller (or a run without xdist)
    _OWN_CACHE = tempfile.mkdtemp(prefix="pojax-test-xla-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_OWN_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_unconfigure(config):
    if _OWN_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Test files whose tests take a minute or more on 2 cores (measured with --durations), run first:
# xdist hands tests out in collection order, and a long test collected last leaves the other
# worker idle at the end of the run. The order within each file is kept.
LONG_FIRST = (
    "tests/reliability/test_kill_loop.py", "tests/train/test_resume_and_mesh.py", "tests/train/test_diffusion_train.py",
    "tests/test_readme.py", "tests/train/test_losses_and_references.py", "tests/likelihood/test_shared_prompt.py",
    "tests/test_preflight.py", "tests/experiments/test_distributed.py", "tests/train/test_tr_dpo.py",
    "tests/train/test_reference_cache.py", "tests/diffpo/test_paper_recipe.py", "tests/train/test_ofs.py",
    "tests/train/test_real_vocab.py", "tests/experiments/test_elbo_variance.py", "tests/train/test_paper_recipes.py",
    "tests/reliability/test_determinism.py", "tests/train/test_export_workdir.py", "tests/train/test_wandb.py",
)


def pytest_configure(config):
    """Under xdist (``-n 2``), hand out whole test files (``--dist loadfile``) instead of single
    tests: a module-scoped fixture (an uninterrupted training run, a 2-process run, a golden
    model) then runs once per run, not once per worker that draws one of its tests. Files go out in
    collection order, LONG_FIRST first."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_FIRST)))
