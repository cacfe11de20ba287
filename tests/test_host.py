"""pojax.host: a CPU run re-executes once with glibc's huge pages for large blocks, so XLA's
per-step buffer faults in 2 MiB pages instead of 4 KiB ones."""
import os
import subprocess
import sys

import pytest

from pojax import host

# Re-executes itself when pojax.host says so, then a worker thread (as XLA's) mallocs, touches and
# frees 64 MiB twice (plain malloc: numpy would ask for huge pages itself) and prints the page
# faults of the second block.
_PROBE = """
import ctypes, ctypes.util, os, resource, threading
from pojax import host
host.reexec_with_huge_pages()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
out = []
def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(64 * 2**20)
        ctypes.memset(p, 1, 64 * 2**20)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(p)
t = threading.Thread(target=work); t.start(); t.join()
print(os.environ.get("GLIBC_TUNABLES", "-"), out[1])
"""


def _probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host._DONE_ENV)}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**base, "JAX_PLATFORMS": "cpu", **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(host.huge_page_env({"JAX_PLATFORMS": "cpu"}) is None,
                    reason="needs Linux, glibc >= 2.35 and transparent huge pages")
def test_reexecuted_process_faults_large_blocks_in_huge_pages():
    tunables, faults = _probe()
    assert tunables == "glibc.malloc.hugetlb=1"
    assert faults < 2048  # 64 MiB = 16,384 pages of 4 KiB, or 32 of 2 MiB
    tunables, faults = _probe(POJAX_HOST_MALLOC="system")  # opted out: glibc's defaults
    assert tunables == "-" and faults > 10_000


def test_reexec_only_where_it_helps():
    cpu = {"JAX_PLATFORMS": "cpu"}
    env = host.huge_page_env(cpu, glibc=(2, 36), thp="madvise")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env[host._DONE_ENV] == "1"
    kept = host.huge_page_env({**cpu, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc=(2, 36), thp="always")
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    for environ, glibc, thp in [(env, (2, 36), "madvise"),  # already re-executed
                                ({**cpu, "POJAX_HOST_MALLOC": "system"}, (2, 36), "madvise"),  # opted out
                                ({"JAX_PLATFORMS": "cuda"}, (2, 36), "madvise"), ({"JAX_PLATFORMS": "tpu,cpu"}, (2, 36), "madvise"),
                                (cpu, (2, 31), "madvise"), (cpu, (2, 36), "never")]:
        assert host.huge_page_env(environ, glibc=glibc, thp=thp) is None, (environ, glibc, thp)


def test_thp_mode_is_read_from_the_kernel_setting(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert host.transparent_huge_pages(str(setting)) == "madvise"
    assert host.transparent_huge_pages(str(tmp_path / "missing")) is None


def test_cpu_xla_flags_add_the_lean_scheduler_unless_set():
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    assert host.cpu_xla_flags({"JAX_PLATFORMS": "cpu"}) == flag
    assert host.cpu_xla_flags({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--a=1"}) == f"--a=1 {flag}"
    # the user's own setting wins; an accelerator run is left alone
    assert host.cpu_xla_flags({"JAX_PLATFORMS": "cpu",
                               "XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}) is None
    assert host.cpu_xla_flags({"JAX_PLATFORMS": "tpu"}) is None


# mallocs 2,000 blocks of 64 KiB (below glibc's mmap threshold: they come from the heap), touches
# them, frees all but the last (which pins the heap's top, so glibc's automatic trim cannot shrink
# it), then prints the RSS in KiB before and after release_free_memory.
_HEAP_PROBE = """
import ctypes, ctypes.util
from pojax import host
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
blocks = [libc.malloc(64 * 1024) for _ in range(2000)]
for p in blocks:
    ctypes.memset(p, 1, 64 * 1024)
for p in blocks[:-1]:
    libc.free(p)
before = rss()
print(host.release_free_memory(), before, rss())
"""


@pytest.mark.skipif(host.glibc_version() is None, reason="malloc_trim is glibc's")
def test_release_free_memory_returns_the_freed_heap():
    env = {**os.environ, host.OPT_OUT_ENV: "system"}
    ran, before, after = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True,
                                        env=env).stdout.split()
    assert ran == "True"
    assert int(before) - int(after) > 100 * 1024, (before, after)  # of the 125 MiB freed
