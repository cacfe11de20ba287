"""What every peer runner takes (the orchestrator's command line, experiments/bench/compare.py)
and writes. Imported by the runners as a sibling module (``import contract``): each runs as a
script under its framework's own Python, not as part of a package."""
import argparse
import json
import resource


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="HF checkpoint dir (weights + tokenizer)")
    p.add_argument("--data", required=True, help="JSONL of prompt / chosen / rejected")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--pairs", type=int, required=True, help="pairs per optimizer step")
    p.add_argument("--max_length", type=int, required=True, help="prompt + completion tokens")
    p.add_argument("--learning_rate", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--out", required=True, help="result JSON")
    return p


def rss_gib() -> float | None:
    """This process's resident set now (Linux), GiB."""
    try:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 2**20
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write(out: str, framework: str, step_times: list, losses: list, rss_between_steps: list | None = None) -> None:
    """{framework, step_times (s per optimizer step), losses (per step), peak_rss_gib, and
    rss_between_steps_gib: the RSS as each step after the first begins (the previous step done)}."""
    with open(out, "w") as f:
        json.dump({"framework": framework, "step_times": step_times, "losses": losses, "peak_rss_gib": peak_rss_gib(),
                   "rss_between_steps_gib": rss_between_steps or []}, f)
