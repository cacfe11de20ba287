"""Multi-host (multi-controller) start: ``jax.distributed.initialize`` from ``config.distributed``.

Every host runs the same ``python -m pojax.main`` command; with
``--config.distributed.initialize=True`` each process joins the others before JAX touches a
device, after which ``jax.devices()`` lists the devices of all hosts and
``jax.process_index()`` / ``jax.process_count()`` drive per-host data loading
(pojax.data.pipeline.make_dataset). On TPU VMs and under SLURM JAX finds the coordinator,
the number of processes and this process's id by itself; the config keys override that.
"""
from __future__ import annotations

import os

import jax


def initialize_kwargs(config) -> dict:
    """jax.distributed.initialize's arguments from config.distributed: "" / 0 / -1 = None
    (JAX auto-detects); the timeouts in whole seconds.

    ``heartbeat_timeout_s`` bounds how long the others run on after one process is lost (killed,
    its host gone): JAX's coordination service then reports the lost process by its task
    number and ends every survivor with a non-zero status, where they would otherwise wait in a
    collective forever; the launcher restarts the job from the last checkpoint."""
    d = config.distributed
    return dict(coordinator_address=d.coordinator_address or None,
                num_processes=d.num_processes if d.num_processes > 0 else None,
                process_id=d.process_id if d.process_id >= 0 else None,
                initialization_timeout=int(d.initialization_timeout_s),
                heartbeat_timeout_seconds=int(d.heartbeat_timeout_s),
                shutdown_timeout_seconds=int(d.shutdown_timeout_s))


def _cpu_platform() -> bool:
    """Whether this run may compute on host CPUs (JAX_PLATFORMS unset or naming cpu). Read from
    the flag, not from jax.devices(), which would start the backends before initialize."""
    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    return not platforms or "cpu" in platforms.split(",")


def maybe_initialize(config) -> bool:
    """Calls jax.distributed.initialize when config.distributed.initialize; returns whether it
    did. Must run before any JAX computation. On CPU, cross-process collectives need gloo
    (without it a jitted reduction over a mesh spanning two processes fails to compile)."""
    if not config.distributed.initialize:
        return False
    if _cpu_platform():
        # only affects the CPU client; harmless next to a TPU or GPU backend
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**initialize_kwargs(config))
    return True
