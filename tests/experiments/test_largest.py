"""experiments/bench/largest.py's search: against a brute-force scan of the depth grid, on
simulated hosts where a depth trains iff its peak stays under the limit."""
import sys

import pytest

from experiments.bench import memory
from experiments.bench.largest import Probe, failure, markdown, next_depth


def simulate(peak, limit, fit, hi, resolution):
    """(largest completed depth or None, depths probed) of the search on a host where depth d
    completes iff peak(d) <= limit."""
    probes = []
    while (d := next_depth(probes, fit, hi, resolution, limit)) is not None:
        assert d not in [p.layers for p in probes] and fit[0] <= d <= hi
        probes.append(Probe(d, peak(d) <= limit, peak(d) if peak(d) <= limit else None))
    ok = [p.layers for p in probes if p.completed]
    return (max(ok) if ok else None), [p.layers for p in probes]


def brute_force(peak, limit, fit, hi, resolution):
    fits = [d for d in range(fit[0], hi + 1, resolution) if peak(d) <= limit]
    return max(fits) if fits else None


@pytest.mark.parametrize("limit", [3.0, 9.7, 10.0, 14.2, 22.5, 23.4, 40.0, 1000.0])
def test_linear_peaks_need_at_most_two_probes_after_the_fit(limit):
    peak = lambda d: 4.1 + 0.25 * d  # GiB: a base plus a per-layer cost
    fit, hi, resolution = [8, 16], 96, 4
    largest, probed = simulate(peak, limit, fit, hi, resolution)
    assert largest == brute_force(peak, limit, fit, hi, resolution)
    assert len(probed) <= len(fit) + 2, probed


@pytest.mark.parametrize("limit", [6.0, 11.0, 17.3, 30.0])
@pytest.mark.parametrize("curve", [lambda d: 2.0 + 0.004 * d * d, lambda d: 5.0 + 3.0 * d ** 0.5,
                                   lambda d: 1.0 + 0.2 * d + (8.0 if d > 40 else 0.0)])
def test_any_increasing_peak_gives_the_brute_force_answer(curve, limit):
    fit, hi, resolution = [8, 16], 96, 4
    largest, probed = simulate(curve, limit, fit, hi, resolution)
    assert largest == brute_force(curve, limit, fit, hi, resolution)
    assert len(probed) <= len(fit) + 2 + 5, probed  # the guess, its check, then halvings of a 23-depth grid


def test_one_completed_probe_bisects_and_a_failed_first_probe_ends_the_search():
    assert next_depth([Probe(8, True, 5.0)], [8], 96, 4, 20.0) == 52  # the middle of 12..96
    # the line through the fit probes (5 + 0.25 d) stays under 20 GiB up to 60 layers; then one step more
    assert next_depth([Probe(8, True, 7.0), Probe(16, True, 9.0)], [8, 16], 96, 4, 20.0) == 60
    assert next_depth([Probe(8, True, 7.0), Probe(16, True, 9.0), Probe(60, True, 20.0)], [8, 16], 96, 4, 20.0) == 64
    assert next_depth([Probe(8, False)], [8, 16], 96, 4, 20.0) == 16  # the fit depths come first
    assert next_depth([Probe(8, False), Probe(16, False)], [8, 16], 96, 4, 20.0) is None
    assert next_depth([Probe(8, True, 5.0), Probe(12, False)], [8], 96, 4, 20.0) is None  # adjacent: done


def test_markdown_names_the_largest_and_the_first_failure():
    w = {"name": "medium", "hidden": 896, "heads": 14, "kv_heads": 2, "intermediate": 4864, "vocab": 151936,
         "tied": True, "pairs": 2, "prompt_len": 256, "completion_len": 256}
    ok = {"layers": 40, "params_m": 732.0, "completed": True, "peak_rss_steps_gib": 17.5, "s_per_step": 80.0}
    bad = {"layers": 44, "params_m": 792.0, "completed": False, "error": "killed"}
    result = {"workload": w, "hardware": "cpu", "steps": 3, "limit_gib": 23.5,
              "runs": {"trl": {"probes": [ok, bad], "largest": ok, "smallest_failed": bad}}}
    text = markdown(result)
    assert "| trl | 40 layers | 732M | 17.50 | 80.0 | 44 layers (792M): killed |" in text


def test_a_killed_run_reads_as_killed(tmp_path):
    """What the OOM killer leaves: SIGKILL, no results file."""
    code = "import os, signal; print('step 1', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    r = memory.summarize(memory.run_sampled([sys.executable, "-c", code], str(tmp_path / "out.json"), 0.05))
    assert r["returncode"] == -9 and failure(r) == "killed (SIGKILL): step 1"
    r = memory.summarize(memory.run_sampled([sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path / "o.json"), 0.05))
    assert failure(r) == "failed (exit 3)"
