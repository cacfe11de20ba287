"""SIGKILL, SIGTERM (a preemption notice) and a checkpoint directory that stops taking writes,
each on a real ``python -m pojax.main`` run, restarted on the same workdir: every restart
resumes from the last complete checkpoint, and the finished run's metrics equal an
uninterrupted run's.

The kill loop: SIGKILL at random moments (start-up, restore, training steps, async checkpoint
writes), N_KILLS lives restarted on the same workdir, then the finished run's metrics equal the
uninterrupted run's bit for bit. Bounded in time: each life is killed at a seeded random delay
after its start, drawn between the start and a little after the moment the uninterrupted run
logged its first step; every second life is killed shortly after it has logged a new step, so
the run always advances and kills land inside training and its checkpoint writes
(checkpoint.every_steps=1).

One kill between checkpoints (checkpoint.every_steps=5): the resumed run restores the step-5
checkpoint, replays the steps after it and lands on the uninterrupted loss curve.

SIGTERM at a random moment inside training (checkpoint.every_steps=5): the run checkpoints the
step it is in, exits 75 with one line, and the relaunch finishes on the uninterrupted curve.

The checkpoint directory made immutable mid-run (chattr +i; chmod does not stop root): the run
stops with exit 74 and one line naming the directory and the cause; the last complete checkpoint
stays the latest, and the relaunch (writable again) finishes on the uninterrupted curve.

All compare against one uninterrupted run (the module's fixture): checkpoint.every_steps
changes when checkpoints are written, not what is trained."""
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.train.helpers import ROOT, flags, losses, main_cmd, read_jsonl

N_KILLS = 3  # 20, then 12, 6, 4, until the CI budget (40 min on 2 cores) asked for fewer; every kill kind still lands
STEPS = 12  # more than N_KILLS lives can log: each is killed within about a step of its first new one
SETTINGS = {"train.sft_steps": 0, "train.max_steps": STEPS, "train.batch_size": 8, "checkpoint.every_steps": 1,
            "checkpoint.keep": 2, "logging.plots": False, "train.export_final": False, "data.gym.num_eval": 8,
            "eval.num_samples": 0, "eval.num_examples": 8, "eval.every_steps": 1000}
RUN = flags(**SETTINGS)


def _env(cache):
    # the persistent compilation cache cuts each restart's compile; cached programs are the same programs
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _finish(workdir, run, env):
    """The same command run to its end (on the module's compilation cache)."""
    proc = subprocess.run(main_cmd(workdir, *run), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _lines(path):
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted run: (its workdir, seconds from spawn to its first logged step, the
    environment with the module's compilation cache, which this run fills)."""
    tmp = tmp_path_factory.mktemp("kill")
    workdir, env = tmp / "clean", _env(tmp / "jax_cache")
    t0 = time.time()
    proc = subprocess.Popen(main_cmd(workdir, *RUN), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_step = None
    while proc.poll() is None:
        if first_step is None and _lines(workdir / "metrics.jsonl"):
            first_step = time.time() - t0
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    return workdir, first_step or 5.0, env


def test_sigkills_then_finish_equal_uninterrupted(tmp_path, clean):
    clean, first_step, env = clean
    killed = tmp_path / "killed"

    rng = np.random.default_rng(15)
    metrics, kills, moments = killed / "metrics.jsonl", 0, []
    startup = min(first_step, 6.0)  # spawn → a life's first new step, lowered as lives show it (the clean run compiled cold)
    while kills < N_KILLS:
        done_before = _lines(metrics)
        proc = subprocess.Popen(main_cmd(killed, *RUN), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        start = time.time()
        after_step = kills % 2 == 1  # else: start-up, restore or the first steps
        delay = rng.uniform(0.0, 0.3) if after_step else rng.uniform(0.3, startup + 0.5)
        progressed = None
        while proc.poll() is None:
            now = time.time()
            if progressed is None and _lines(metrics) > done_before:
                progressed = now
                startup = min(startup, now - start)
            if (after_step and progressed is not None and now - progressed >= delay) or \
                    (not after_step and now - start >= delay) or now - start > 120:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run finished after {kills} kills; raise STEPS"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        moments.append(_lines(metrics))
    assert max(moments) < STEPS, moments
    _finish(killed, RUN, env)  # the last life runs to the end
    print(f"kills survived: {kills}; metrics lines at each kill: {moments}")
    assert [r["step"] for r in read_jsonl(metrics)] == list(range(1, STEPS + 1))
    np.testing.assert_array_equal(losses(killed), losses(clean))
    ckpts = os.listdir(killed / "checkpoints" / "train")
    assert str(STEPS) in ckpts and not [d for d in ckpts if "tmp" in d], ckpts


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, clean):
    """One kill after step 6 with checkpoints every 5 steps: the rerun of the same command
    restores step 5, replays the lost steps and finishes on the uninterrupted curve."""
    clean, _, env = clean
    killed = tmp_path / "killed"
    run = flags(**dict(SETTINGS, **{"checkpoint.every_steps": 5}))
    proc = subprocess.Popen(main_cmd(killed, *run), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _lines(metrics) >= 6:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = _lines(metrics)
    assert 6 <= n_killed < STEPS
    _finish(killed, run, env)  # same command, same workdir: resumes from the latest checkpoint
    assert [r["step"] for r in read_jsonl(metrics)] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(losses(killed), losses(clean), rtol=0, atol=1e-6)
    assert sorted(os.listdir(killed / "checkpoints" / "train"), key=int)[-1] == str(STEPS)


def _start_and_wait_for(workdir, run, env, lines: int):
    proc = subprocess.Popen(main_cmd(workdir, *run), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _lines(workdir / "metrics.jsonl") < lines:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before step {lines}: {proc.stderr.read()[-3000:]}"
    return proc


def _pojax_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("pojax: ") and "run directory" not in line]


def test_sigterm_checkpoints_the_step_and_the_relaunch_resumes(tmp_path, clean):
    clean, _, env = clean
    work = tmp_path / "preempted"
    run = flags(**dict(SETTINGS, **{"checkpoint.every_steps": 5}))
    proc = _start_and_wait_for(work, run, env, lines=2)
    time.sleep(np.random.default_rng(3).uniform(0.0, 0.5))  # somewhere inside a step
    signalled_at = _lines(work / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    stopped = _lines(work / "metrics.jsonl")  # every step is logged (logging.every_steps = 1)
    assert signalled_at <= stopped < STEPS
    [line] = _pojax_lines(err)
    assert line == (f"pojax: SIGTERM received: stage train stopped after step {stopped}, checkpoint written to "
                    f"{work / 'checkpoints' / 'train'}; run the same command again to resume (exit status 75)")
    saved = sorted(int(d) for d in os.listdir(work / "checkpoints" / "train") if d.isdigit())
    assert saved[-1] == stopped  # the step it was in, not the last periodic one (5)
    _finish(work, run, env)
    assert [r["step"] for r in read_jsonl(work / "metrics.jsonl")] == list(range(1, STEPS + 1))
    np.testing.assert_array_equal(losses(work), losses(clean))


def _immutable(path, on: bool) -> bool:
    """chattr ±i (root ignores chmod); False where the filesystem or the user cannot."""
    return shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


def test_unwritable_checkpoint_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, clean):
    clean, _, env = clean
    work = tmp_path / "readonly"
    ckpts = work / "checkpoints" / "train"
    proc = subprocess.Popen(main_cmd(work, *RUN), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (ckpts / "2").is_dir():
        time.sleep(0.005)
    if os.geteuid() != 0:
        ckpts.chmod(0o555)
    elif not _immutable(ckpts, True):
        proc.kill()
        pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        _immutable(ckpts, False)
        ckpts.chmod(0o755)
    assert proc.returncode == 74, err[-3000:]
    [line] = _pojax_lines(err)
    kept = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
    assert line.startswith(f"pojax: writing checkpoints to {ckpts} failed by step "), line
    assert line.endswith(f"); step {kept[-1]} stays the latest checkpoint"), line
    assert "Permission" in line or "not permitted" in line, line
    assert kept[-1] >= 2 and kept[-1] < STEPS
    _finish(work, RUN, env)  # writable again: resumes from the kept checkpoint
    assert [r["step"] for r in read_jsonl(work / "metrics.jsonl")] == list(range(1, STEPS + 1))
    np.testing.assert_array_equal(losses(work), losses(clean))
