"""Loss comparison on the gold-reward gym: every loss the trainer runs × 3 seeds.

A "Hitchhiker's guide"-style study: the same tiny random Llama, SFT-warmed on the gym, then
preference-trained with each registered loss at its TRL defaults (β = 0.1), compared by the gold
win rate over the starting policy and the held-out reward accuracy. Reference-free losses run
with reference.mode=none; unpaired ones (kto, bco, apo_zero_unpaired) read the gym's unpaired
set. Losses pojax.config.validate refuses for training (listwise, token-level extras, madpo)
are left out, and so are the online ones (online_dpo, xpo: they draw their own labels, see
configs/online_dpo.py). Sized for a CPU: about an hour at --parallel=2 on 2 cores.

    python -m experiments.launch --sweep=experiments/sweeps/gym_losses.py --parallel=2
    python -m experiments.report --sweep=experiments/sweeps/gym_losses.py
"""
import os

from pojax import losses
from pojax.config import ONLINE_LOSSES, ConfigError, validate

base = "configs/quickstart.py"
fixed = {
    "train.sft_steps": 100,
    "train.max_steps": 100,
    "data.gym.num_train": 2048,
    "data.gym.num_eval": 128,
    "eval.num_examples": 64,
    "eval.every_steps": 25,
    "eval.num_samples": 2,
    "checkpoint.every_steps": 50,
    "train.export_final": False,
    "logging.progress": False,
    "logging.plots": False,  # experiments.report draws the overlaid curves
}
SEEDS = (0, 1, 2)


def _trainable_losses() -> list:
    """[{loss.name, (reference.mode)}] for each distinct loss function the trainer accepts on
    the gym (aliases such as dpo → sigmoid counted once)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(root, base))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out, seen = [], set()
    names = sorted(losses.names(), key=lambda n: n != losses.get(n).__name__)  # canonical names first
    for name in names:
        fn = losses.get(name)
        if fn in seen or name in ONLINE_LOSSES:
            continue
        seen.add(fn)
        overrides = {"loss.name": name}
        if not losses.needs_reference(name):
            overrides["reference.mode"] = "none"
        config = recipe.get_config()
        config.loss.name = name
        config.reference.mode = overrides.get("reference.mode", config.reference.mode)
        try:
            validate(config)
        except ConfigError:
            continue
        out.append(overrides)
    return sorted(out, key=lambda o: o["loss.name"])


runs = _trainable_losses()
grid = {"train.seed": list(SEEDS)}
