"""README's two commands, run verbatim as a new user runs them: in a fresh copy of the repository
(every file git tracks or would track), from that copy as the working directory, with no
``--workdir``, in a new virtual environment.

The new environment sees this one's site-packages through a .pth file, so that ``pip install -e
.`` finds every dependency installed and only installs pojax itself (no download, no rebuild of
torch); the command text is README's, character for character.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests.train.helpers import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NESTED = "POJAX_README_NESTED"  # set in the nested test run: never recurse into this file


def readme_block(heading: str) -> str:
    """The first ```bash block after ``heading`` in README.md, as one command line."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(heading)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    return " ".join(line.rstrip("\\").strip() for line in block.strip().splitlines())


def fresh_copy(dest) -> str:
    """The repository's files as a clone would hold them (tracked and untracked-not-ignored:
    what this checkout would commit), copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))
    return str(dest)


def new_venv(path) -> dict:
    """A virtual environment at ``path`` that sees this interpreter's packages; the environment
    variables that activate it."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = subprocess.run([os.path.join(path, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "outer_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "XLA_FLAGS")}
    env.update(VIRTUAL_ENV=str(path), PATH=f"{os.path.join(path, 'bin')}:{env.get('PATH', '')}", PIP_NO_INPUT="1")
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if os.environ.get(NESTED):
        pytest.skip("inside README's test command run by this file")
    base = tmp_path_factory.mktemp("readme")
    return fresh_copy(base / "pojax"), new_venv(base / "venv")


def test_readme_commands_are_the_documented_ones():
    install_run = readme_block("## Install and run")
    assert install_run == "pip install -e . && python -m pojax.main --config=configs/quickstart.py"
    test_cmd = readme_block("## Tests")
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    # the test extras at the exact versions CI passed with (.ci/constraints.txt), then the suite
    assert test_cmd == 'pip install -e ".[test]" -c .ci/constraints.txt && python -m pytest -q -n 2 tests'
    assert os.path.isfile(os.path.join(ROOT, ".ci", "constraints.txt"))
    assert test_cmd in ci.splitlines()  # .ci/run runs exactly README's test command


def test_readme_first_command_verbatim(clone):
    repo, env = clone
    command = readme_block("## Install and run")
    proc = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    workdir = os.path.join(repo, "workdirs", "run")  # the default --workdir, relative to where it ran
    assert f"pojax: outputs in {workdir}" in proc.stdout.splitlines()
    lines = proc.stdout.splitlines()  # pip's lines, then pojax's
    ours = lines[next(i for i, l in enumerate(lines) if l.startswith("pojax: task train"))]
    assert len(lines) - lines.index(ours) < 40, proc.stdout  # a summary line and the results, not a config dump
    assert "gold_win_rate" in proc.stdout  # the printed result table
    # what the quickstart promises: SFT, then DPO that beats the SFT start on the gold reward
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["gold_win_rate"] >= 0.75, results
    assert results["gold_reward_after"] >= results["gold_reward_before"] + 0.15, results
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-5  # reference = policy at step 1
    for key in ("step", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "step_time_s", "tokens_per_s", "learning_rate", "epoch"):
        assert key in rows[-1], key
    assert len(rows) == 200 and rows[-1]["rewards/accuracies"] > 0.7
    sft = read_jsonl(os.path.join(workdir, "metrics_sft.jsonl"))
    assert sft[-1]["loss"] < sft[0]["loss"]
    for plot in ("loss", "rewards", "margins", "accuracies", "sft_loss"):
        assert os.path.getsize(os.path.join(workdir, "plots", f"{plot}.png")) > 1000
    assert json.load(open(os.path.join(workdir, "config.json")))["loss"]["name"] == "sigmoid"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "train"))) == ["100", "200"]


def test_readme_test_command_verbatim(clone):
    """README's test command, verbatim, on one quick test (PYTEST_ADDOPTS narrows what the
    nested pytest collects; the whole suite is what CI runs with the same line)."""
    repo, env = clone
    # collect tests/losses/test_properties.py only (each worker imports what it collects: the rest of
    # tests/losses imports torch), then one test of it
    skip = " ".join(f"--ignore=tests/{d}" for d in sorted(os.listdir(os.path.join(ROOT, "tests")))
                    if d != "losses" and not d.startswith(("__", "conftest")))
    skip += "".join(f" --ignore=tests/losses/{f}" for f in sorted(os.listdir(os.path.join(ROOT, "tests", "losses")))
                    if f.startswith("test_") and f.endswith(".py") and f != "test_properties.py")
    env = dict(env, **{NESTED: "1", "PYTEST_ADDOPTS": f"{skip} -k test_kto_at_reference_is_half_the_weight"})
    proc = subprocess.run(["bash", "-c", readme_block("## Tests")], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\b1 passed\b", proc.stdout), proc.stdout[-2000:]
