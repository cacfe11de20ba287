"""pojax.train.preemption: the preemption notice (signals → a flag, handlers restored), the step
watchdog (a stuck step → every thread's stack and exit 76, in a real process), their config
keys. A real run preempted by SIGTERM and resumed: tests/reliability/test_kill_loop.py; across 2
processes with the signal sent to one: tests/experiments/test_distributed.py."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pojax.config import ConfigError, base_config, validate
from pojax.train import preemption
from tests.train.helpers import ROOT, main_cmd


def test_parse_signals():
    assert preemption.parse_signals("SIGTERM,SIGUSR1") == (signal.SIGTERM, signal.SIGUSR1)
    assert preemption.parse_signals(" usr2 , SIGINT") == (signal.SIGUSR2, signal.SIGINT)
    assert preemption.parse_signals("") == ()
    for bad in ("SIGKILL", "SIGNOPE", "TERMINATE"):
        with pytest.raises(ValueError, match="not a signal a process can catch"):
            preemption.parse_signals(bad)


def test_notice_turns_the_signal_into_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGUSR1)
    with preemption.notice("SIGUSR1,SIGUSR2") as notice:
        assert preemption.current() is notice and notice.agreed() == ""
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # the handler runs in the main thread between bytecodes
        assert notice.received == "SIGUSR2" and notice.agreed() == "SIGUSR2"  # the first one
    assert signal.getsignal(signal.SIGUSR1) is before
    assert preemption.current() is not notice and preemption.current().agreed() == ""


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.preemption_signals", "SIGKILL", "config key train.preemption_signals: 'SIGKILL': SIGKILL is not a signal"),
    ("train.step_timeout_s", -1.0, "config key train.step_timeout_s: must be a number of seconds >= 0"),
    ("distributed.heartbeat_timeout_s", 0, "config key distributed.heartbeat_timeout_s: must be a number of seconds >= 1"),
])
def test_bad_keys_are_named(key, value, message):
    config = base_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError) as e:
        validate(config)
    assert str(e.value).startswith(message), str(e.value)


WATCHED = textwrap.dedent("""
    import time
    from pojax.train.preemption import Watchdog

    def stuck_in_a_collective():
        time.sleep(60)

    with Watchdog(1.0) as dog:
        for _ in range(8):  # steps of 0.3 s, each beating: no alarm
            time.sleep(0.3)
            dog.beat()
        print("steps done", flush=True)
        stuck_in_a_collective()
""")


def test_watchdog_dumps_every_thread_and_exits_76():
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", WATCHED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.time() - t0
    assert proc.returncode == preemption.EXIT_STUCK == 76, proc.stderr
    assert proc.stdout == "steps done\n"  # 2.4 s of beaten steps passed a 1 s bound
    lines = proc.stderr.splitlines()
    assert lines[0] == ("pojax: no training step completed in 1 s (train.step_timeout_s); the Python stack of every "
                        "thread follows; exiting with status 76")
    assert any("stuck_in_a_collective" in line for line in lines)  # the main thread's stack
    assert any("_watch" in line for line in lines)  # and the watchdog's own
    assert elapsed < 30


def test_watchdog_in_a_training_run(tmp_path):
    """A bound shorter than the first step (which traces and compiles) ends the run with 76 and
    the stack shows where it was: in the training stage."""
    proc = subprocess.run(main_cmd(tmp_path, "--config.train.sft_steps=0", "--config.model.num_layers=1",
                                   "--config.train.step_timeout_s=0.01", "--config.logging.plots=False"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 76, proc.stderr[-3000:]
    assert "pojax: no train step completed in 0.01 s (train.step_timeout_s)" in proc.stderr
    assert "in run_stage" in proc.stderr
