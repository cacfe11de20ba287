"""experiments.report on synthetic run directories."""
import csv
import json
import os

import pytest

from experiments import report, sweeps

SWEEP = "base = 'configs/quickstart.py'\ngrid = {'loss.name': ['ipo', 'sigmoid'], 'loss.beta': [0.1, 0.5], 'train.seed': [0, 1]}\n"


def _write_run(root, name, final_loss, win=None, steps=3):
    d = root / name
    d.mkdir(parents=True)
    with open(d / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            row = {"step": s, "loss": final_loss + (steps - s), "rewards/accuracies": 0.5 + 0.1 * s}
            if s == steps:
                row["eval_rewards/accuracies"] = 0.9
            f.write(json.dumps(row) + "\n")
    if win is not None:
        (d / "results.json").write_text(json.dumps({"loss": name.split("-")[0], "gold_win_rate": win, "steps": steps}))


@pytest.fixture
def sweep_and_root(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(SWEEP)
    sweep = sweeps.load(str(path))
    root = tmp_path / "runs"
    _write_run(root, "ipo-beta0.1-seed0", 0.25, win=0.6)
    _write_run(root, "ipo-beta0.1-seed1", 0.35, win=0.8)
    _write_run(root, "sigmoid-beta0.5-seed0", 0.5)  # killed: metrics, no results
    return sweep, root


def test_collect_statuses_and_finals(sweep_and_root):
    sweep, root = sweep_and_root
    recs = {r["name"]: r for r in report.collect(sweep, str(root))}
    assert len(recs) == 8
    assert recs["ipo-beta0.1-seed0"]["status"] == "done"
    assert recs["sigmoid-beta0.5-seed0"]["status"] == "partial"
    assert recs["sigmoid-beta0.5-seed1"]["status"] == "missing"
    final = recs["ipo-beta0.1-seed1"]["final"]
    assert final["loss"] == 0.35 and final["gold_win_rate"] == 0.8 and final["step"] == 3
    assert final["eval_rewards/accuracies"] == 0.9 and final["rewards/accuracies"] == pytest.approx(0.8)
    assert recs["ipo-beta0.1-seed1"]["swept"] == {"loss.name": "ipo", "loss.beta": 0.1, "train.seed": 1}


def test_report_files(sweep_and_root):
    sweep, root = sweep_and_root
    text = report.report(sweep, str(root))
    assert (root / "report.md").read_text() == text
    with open(root / "report.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["run", "loss.name", "loss.beta", "train.seed", "status", "gold_win_rate",
                       "eval_rewards/accuracies", "rewards/accuracies", "loss", "step"]
    assert rows[1] == ["ipo-beta0.1-seed0", "ipo", "0.1", "0", "done", "0.6", "0.9", "0.8", "0.25", "3"]
    assert rows[-1][:5] == ["sigmoid-beta0.5-seed1", "sigmoid", "0.5", "1", "missing"] and rows[-1][5:] == [""] * 5
    assert "2/8 runs done" in text
    # averaged over seeds: ipo β=0.1 has win rates 0.6 and 0.8
    assert "| ipo | 0.1 | 2 | 0.7 ± 0.1 | 0.9 ± 0 |" in text
    assert "| ipo-beta0.1-seed1 | ipo | 0.1 | 1 | done | 0.8 | 0.9 | 0.8 | 0.35 | 3 |" in text
    plots = sorted(os.listdir(root / "plots"))
    assert plots == ["accuracies.png", "eval_accuracies.png", "gold_win_rate_vs_loss.beta.png",
                     "gold_win_rate_vs_loss.name.png", "gold_win_rate_vs_train.seed.png", "loss.png"]


def test_report_without_seed_or_runs(tmp_path):
    path = tmp_path / "s.py"
    path.write_text("base = 'configs/quickstart.py'\nruns = [{'loss.name': 'ipo'}, {'loss.name': 'simpo'}]\n")
    sweep = sweeps.load(str(path))
    text = report.report(sweep, str(tmp_path / "none"))
    assert "Mean ± std" not in text and "0/2 runs done" in text
    assert "| ipo | ipo | missing |" in text


def test_report_of_run_directories(tmp_path):
    """--runs: any run directories, swept keys = the config.json entries that differ."""
    runs = tmp_path / "runs"
    for name, loss, beta, win in (("a", "sigmoid", 0.1, 0.7), ("b", "ipo", 0.1, 0.5), ("c", "sigmoid", 0.5, 0.9)):
        _write_run(runs, name, 0.3, win=win)
        (runs / name / "config.json").write_text(json.dumps(
            {"loss": {"name": loss, "beta": beta}, "train": {"seed": 0, "max_steps": 3}}))
    dirs = [str(runs / n) for n in "abc"]
    sweep = report.workdirs_sweep(dirs)
    assert [r.swept for r in sweep.runs] == [{"loss.beta": 0.1, "loss.name": "sigmoid"},
                                              {"loss.beta": 0.1, "loss.name": "ipo"},
                                              {"loss.beta": 0.5, "loss.name": "sigmoid"}]
    out = tmp_path / "compare"
    text = report.report(sweep, "", out=str(out))
    assert (out / "report.md").read_text() == text and "3/3 runs done" in text
    with open(out / "report.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["run", "loss.beta", "loss.name", "status"]
    assert rows[3][:5] == [dirs[2], "0.5", "sigmoid", "done", "0.9"]
    assert "gold_win_rate_vs_loss.beta.png" in os.listdir(out / "plots")
