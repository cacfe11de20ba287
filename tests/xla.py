"""The XLA flags every test process runs with (the pytest workers and each ``python -m pojax.main``
a test starts).

Tests on 2 CPU cores spend most of their time compiling tiny programs, not running them. XLA's
CPU backend at optimization level 0 with LLVM's expensive passes off compiles those programs about
16% faster (tests/sampling/test_decode: 80 s → 67 s); the programs compute the same functions,
and every bit-for-bit comparison in the tests compares two runs made under the same flags.
"""
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def flags(devices: int) -> str:
    """XLA_FLAGS for a test process that sees ``devices`` host CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
