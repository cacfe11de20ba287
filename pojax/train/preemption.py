"""Stopping a long run cleanly: a preemption notice and a watchdog for a stuck step.

**Preemption notice.** A preempted TPU VM, a spot GPU or a SLURM job at its time limit gets
SIGTERM (SLURM: SIGUSR1 too with ``--signal=USR1@<s>``) some seconds before it is killed.
While a training stage runs, ``notice`` turns each signal of ``train.preemption_signals`` into a
flag; the stage (pojax.train.loop.run_stage) asks ``Notice.agreed`` after every optimizer step,
and on "yes" writes a checkpoint at that step (orbax state and data iterator), flushes its
metrics and raises ``Preempted``: ``python -m pojax.main`` then exits with ``EXIT_PREEMPTED``
(75, sysexits' EX_TEMPFAIL, "try again"), which the launchers in experiments/backends treat as
"requeue". Relaunching the same command resumes from that checkpoint exactly.

Multi-host: the signal may reach one host only. Every host takes part in one all-gather of its
flag per step (``jax.experimental.multihost_utils.process_allgather``, a few bytes), so all of
them see the same answer at the same step and checkpoint that step together: no host waits in a
collective that another has left. (JAX's own ``reached_preemption_sync_point`` listens for
SIGTERM in C++ only; a Python handler for SIGUSR1 needs its own agreement, and one mechanism for
both signals keeps single- and multi-host runs alike.)

**Stuck step.** ``Watchdog(bound)`` is a daemon thread: when no ``beat()`` comes within
``bound`` seconds it writes one line and every thread's Python stack (faulthandler) to stderr
and ends the process with ``EXIT_STUCK`` (76), instead of hanging silently. The stage beats it
after each optimizer step (evaluation and checkpoint included) and arms it when its loop starts,
so a stage's first step, which compiles, has the same bound.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading

import numpy as np

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: the run stopped at a checkpoint; relaunch it
EXIT_STUCK = 76  # the step watchdog (train.step_timeout_s) ended a run whose step did not complete


class Preempted(Exception):
    """A stage stopped at a checkpoint after a preemption signal."""

    def __init__(self, stage: str, step: int, signal_name: str, directory: str):
        self.stage, self.step, self.signal_name, self.directory = stage, step, signal_name, directory
        super().__init__(f"{signal_name} received: stage {stage} stopped after step {step}, checkpoint written to "
                         f"{directory}; run the same command again to resume (exit status {EXIT_PREEMPTED})")


def parse_signals(names: str) -> tuple[signal.Signals, ...]:
    """``"SIGTERM,SIGUSR1"`` → the signals; "" → none. Raises ValueError naming an unknown one."""
    out = []
    for name in filter(None, (n.strip().upper() for n in names.split(","))):
        name = name if name.startswith("SIG") else "SIG" + name
        if not isinstance(getattr(signal, name, None), signal.Signals) or name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"{name} is not a signal a process can catch (e.g. SIGTERM, SIGUSR1, SIGINT)")
        out.append(getattr(signal, name))
    return tuple(out)


class Notice:
    """The preemption flag of this process: ``received`` names the first signal caught (or "")."""

    def __init__(self):
        self.received = ""

    def _handle(self, signum, frame) -> None:
        del frame
        if not self.received:
            self.received = signal.Signals(signum).name

    def agreed(self) -> str:
        """The signal any process of the run received ("" = none). Every process must call it at
        the same point (after the same optimizer step): with several processes it is a
        collective."""
        import jax

        if jax.process_count() == 1:
            return self.received
        from jax.experimental import multihost_utils

        names = sorted(signal.Signals)
        mine = np.int32(names.index(signal.Signals[self.received]) + 1 if self.received else 0)
        codes = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
        hits = [int(c) for c in codes if c]
        return names[hits[0] - 1].name if hits else ""


_CURRENT = Notice()  # a notice nobody signals, outside ``notice``


def current() -> Notice:
    """The notice of the ``notice`` block this process is in (one that never fires outside)."""
    return _CURRENT


@contextlib.contextmanager
def notice(names: str):
    """Within the block, the signals of ``names`` (config ``train.preemption_signals``) set the
    flag of the yielded Notice (also ``current()``) instead of their default action; the
    previous handlers come back at the end. Signals can only be caught in the main thread: off
    it, the block is a no-op notice."""
    global _CURRENT
    sigs = parse_signals(names)
    fresh = Notice()
    if threading.current_thread() is not threading.main_thread():
        sigs = ()
    previous = {s: signal.signal(s, fresh._handle) for s in sigs}
    outer, _CURRENT = _CURRENT, fresh
    try:
        yield fresh
    finally:
        _CURRENT = outer
        for s, handler in previous.items():
            signal.signal(s, handler)


class Watchdog:
    """Ends the process (``EXIT_STUCK``) when ``beat`` is not called for ``bound`` seconds;
    ``bound`` <= 0 = off. Use as a context manager (armed on entry, stopped on exit)."""

    def __init__(self, bound: float, what: str = "training step", stream=None):
        self.bound, self.what = float(bound), what
        self.stream = stream
        self._beat = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._beat.wait(self.bound):
                self._beat.clear()
                continue
            if self._stop.is_set():
                return
            stream = self.stream or sys.stderr
            stream.write(f"pojax: no {self.what} completed in {self.bound:g} s (train.step_timeout_s); the Python "
                         f"stack of every thread follows; exiting with status {EXIT_STUCK}\n")
            stream.flush()
            faulthandler.dump_traceback(file=stream, all_threads=True)
            stream.flush()
            os._exit(EXIT_STUCK)  # a stuck collective never returns: no cleanup can run

    def beat(self) -> None:
        self._beat.set()

    def __enter__(self):
        if self.bound > 0:
            self._thread = threading.Thread(target=self._watch, name="pojax-step-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.set()
        if self._thread is not None:
            self._thread.join()
