"""Host-process settings for CPU runs, made before JAX starts (stdlib only: imported first).

XLA:CPU allocates each executable's temporary buffer (226 MiB for the tiny benchmark's DPO step,
~3 GiB for the small one) with malloc. glibc serves a block that large with a fresh ``mmap`` and
``munmap``s it on free, so every step page-faults the whole buffer back in, 4 KiB at a time:
on the tiny step 58k page faults and ~90 ms of kernel time per step on one core (12% of the step;
strace shows one mmap/munmap pair per step). Asking glibc to back its large blocks with
transparent huge pages (its ``glibc.malloc.hugetlb=1`` tunable, glibc ≥ 2.35) cuts that to ~100
faults of 2 MiB: tiny step 0.75 → 0.66 s on one core, small step 9.9 → 8.9 s on two, same peak
memory. (Keeping freed blocks instead, with mallopt's one arena / no mmap / no trim, was faster
still on tiny but fragmented the heap: 13 GiB peak instead of 5 on small.)

glibc reads tunables only at process start, so ``reexec_with_huge_pages`` re-executes the
command line once with the tunable added to ``GLIBC_TUNABLES``. It does so only where it helps
and is safe: Linux with glibc ≥ 2.35, transparent huge pages not "never", JAX computing on the
CPU (a GPU or TPU run keeps its buffers on the device), not already done, and not opted out with
``POJAX_HOST_MALLOC=system``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys

OPT_OUT_ENV = "POJAX_HOST_MALLOC"  # "system": leave glibc's defaults
_DONE_ENV = "POJAX_HOST_REEXEC"  # set in the re-executed process, so it never loops
_TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def computes_on_cpu(environ=os.environ) -> bool:
    """Whether JAX will compute on the host CPU: ``JAX_PLATFORMS`` names cpu first, or it is unset
    and no accelerator plugin (a ``jax_plugins`` entry point or package, libtpu) is installed.
    Decided without starting JAX's runtime."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, or None off Linux / glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = _libc()
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        major, minor = libc.gnu_get_libc_version().decode().split(".")[:2]
        return int(major), int(minor)
    except (OSError, AttributeError, ValueError):
        return None


def transparent_huge_pages(path: str = _THP_SETTING) -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never"), None when unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, stop = text.find("["), text.find("]")
    return text[start + 1:stop] if 0 <= start < stop else None


def huge_page_env(environ=os.environ, glibc=None, thp=None) -> dict | None:
    """The environment to re-execute with (``environ`` plus the tunable), or None when the
    re-execution would not help or is not wanted (see the module docstring)."""
    glibc = glibc_version() if glibc is None else glibc
    thp = transparent_huge_pages() if thp is None else thp
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get(OPT_OUT_ENV) == "system" or environ.get(_DONE_ENV) or _TUNABLE in tunables
            or glibc is None or glibc < (2, 35) or thp in (None, "never") or not computes_on_cpu(environ)):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{_TUNABLE}=1"])), _DONE_ENV: "1"}


# XLA:CPU's concurrency-optimized scheduler orders the step for parallel thunks and keeps more
# buffers alive at once: on the small benchmark's DPO step (512d × 8 layers, 4 pairs × 512 tokens)
# its temporaries are 2.54 GB (2.42 with model.remat=full) against 1.87 (1.60) with the default
# scheduler, at the same step time (12.4 → 11.0 s). Measured in pojax's README, "Memory".
_CPU_XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def cpu_xla_flags(environ=os.environ) -> str | None:
    """``XLA_FLAGS`` with pojax's XLA:CPU flags added (each only where the user has not set it), or
    None when JAX does not compute on the CPU or nothing is added."""
    flags = environ.get("XLA_FLAGS", "")
    extra = [f for f in _CPU_XLA_FLAGS if f.split("=")[0] not in flags]
    if not extra or not computes_on_cpu(environ):
        return None
    return " ".join(filter(None, [flags.strip(), *extra]))


def set_cpu_xla_flags() -> None:
    """Adds ``cpu_xla_flags`` to this process's environment; call it before JAX's backend starts."""
    flags = cpu_xla_flags()
    if flags is not None:
        os.environ["XLA_FLAGS"] = flags


def prepare_process() -> None:
    """What ``python -m pojax.main`` (and a benchmark runner standing in for it) does first, before
    any heavy import: ``set_cpu_xla_flags``, then ``reexec_with_huge_pages``."""
    set_cpu_xla_flags()
    reexec_with_huge_pages()


def reexec_with_huge_pages() -> None:
    """Re-executes this process's command line (``sys.orig_argv``) with glibc's huge-page tunable
    when ``huge_page_env`` says so; returns only when it does not. Call it first thing in a
    script's ``__main__`` (before JAX, before any output or files)."""
    env = huge_page_env()
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)


def release_free_memory() -> bool:
    """Hands the heap memory glibc keeps after frees back to the OS (``gc.collect`` then glibc's
    ``malloc_trim(0)``); True where it ran (Linux, glibc). XLA's compilation of a train step frees
    GiBs of heap that glibc otherwise keeps mapped: measured on the medium bench workload (494M
    parameters, unrolled layers), the RSS after compiling fell 9.70 → 8.65 GiB, and the steps'
    peak with it (their temporaries are fresh ``mmap`` blocks that do not reuse that heap).
    Takes about a second there; call it after rare, large events (a compile), not every step."""
    import gc

    gc.collect()
    if glibc_version() is None:
        return False
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True
