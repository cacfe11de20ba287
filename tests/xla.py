"""The XLA flags every test process runs with (the pytest workers and each ``python -m pojax.main``
a test starts).

Tests on 2 CPU cores spend most of their time compiling tiny programs, not running them. XLA's
CPU backend at optimization level 0 with LLVM's expensive passes off compiles those programs about
16% faster (tests/sampling/test_decode: 80 s → 67 s). XLA's older (non-MLIR) CPU fusion emitters
and one LLVM module per program (no codegen split: two test workers already fill the two cores)
cut the CPU time of a cold tiny ``pojax.main`` run a further ~20% (user time 27.3 / 25.6 s →
19.2 / 20.4 s, two repeats) and of the 300-step SFT stage run in tests ~15% (46.8 → 39.1 s).
The programs compute the same functions, and every bit-for-bit comparison in the tests compares
two runs made under the same flags.
"""
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")


def flags(devices: int) -> str:
    """XLA_FLAGS for a test process that sees ``devices`` host CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
