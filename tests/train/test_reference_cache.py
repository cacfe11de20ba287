"""reference.cache_dir: precomputed reference values (diffusion ELBOs with their fixed per-example
draws, or autoregressive log-probs) are written once with a manifest, reused by a run whose
manifest matches (identical training), and refused with a ConfigError naming what differs: the
draw settings, the draw key, the reference model, the data rows, a tampered values file."""
import json
import os

import jax
import numpy as np
import pytest

from pojax.config import ConfigError, validate
from pojax.train import reference_cache
from pojax.train.data import gym_data
from pojax.train.objectives import mask_id_of, with_example_ids
from pojax.train.run import build_model, run_train
from tests.train.helpers import override, quick_config, read_jsonl, recipe

TINY = {"train.sft_steps": 0, "train.max_steps": 3, "train.batch_size": 8, "data.gym.num_train": 32,
        "eval.num_examples": 8, "eval.every_steps": 3, "data.gym.num_eval": 4, "eval.num_samples": 1,
        "likelihood.n_mc": 2, "loss.name": "sigmoid", "optimizer.warmup_steps": 0, "optimizer.learning_rate": 1e-2,
        "logging.plots": False, "train.export_final": False, "reference.mode": "precomputed"}


def diffusion_config(cache_dir, **overrides):
    c = override(recipe("quickstart_diffusion"), {"logging.progress": False, **TINY,
                                                   "reference.cache_dir": str(cache_dir), **overrides})
    validate(c)
    return c


def losses_of(workdir):
    return [r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """(cache dir, losses, results) of a diffusion run that wrote the cache."""
    root = tmp_path_factory.mktemp("refcache")
    results = run_train(diffusion_config(root / "cache"), str(root / "run1"))
    return root / "cache", losses_of(root / "run1"), results


def test_second_run_reuses_the_cache_and_trains_identically(first_run, tmp_path):
    cache, losses, results = first_run
    assert results["reference_cache_reused"] is False
    assert len(set(losses)) == len(losses)  # the policy moves: identical losses below are not trivial
    manifest = json.loads((cache / reference_cache.MANIFEST_FILE).read_text())
    assert manifest["settings"]["likelihood.n_mc"] == 2 and manifest["settings"]["likelihood.draws"] == "fixed_per_example"
    assert manifest["rows"] == {"train": 32, "held_out": 8}
    assert not [f for f in os.listdir(cache) if f.startswith(".")]  # no temporary files left behind
    again = run_train(diffusion_config(cache), str(tmp_path))
    assert again["reference_cache_reused"] is True
    np.testing.assert_array_equal(losses_of(tmp_path), losses)
    assert again["eval_loss"] == results["eval_loss"]


def reference_inputs(config):
    """(starting policy = reference, {split: rows}, mask id) as run_train builds them (no SFT)."""
    data = gym_data(config)
    model = build_model(config, data.vocab_size)
    rows = with_example_ids(data.preference)
    held = with_example_ids(data.held_out, offset=len(rows["chosen_ids"]))
    return model, {"train": rows, "held_out": held}, mask_id_of(model, config)


def cached(config, model=None):
    ref, splits, mask_id = reference_inputs(config)
    return reference_cache.precomputed_reference(model or ref, splits, config, mask_id=mask_id,
                                                  batch_size=config.train.batch_size)


def refusal(config, model=None) -> str:
    with pytest.raises(ConfigError, match="config key reference.cache_dir") as e:
        cached(config, model)
    return str(e.value)


def test_the_same_inputs_read_the_values_the_run_wrote(first_run):
    values, reused = cached(diffusion_config(first_run[0]))
    computed, none = cached(diffusion_config(""))
    assert (reused, none) == (True, None)
    for split in computed:
        for k in computed[split]:
            np.testing.assert_array_equal(values[split][k], computed[split][k])


def test_other_n_mc_is_refused_by_name(first_run):
    msg = refusal(diffusion_config(first_run[0], **{"likelihood.n_mc": 4}))
    assert "values were made with likelihood.n_mc=2, this run has 4" in msg
    assert "reference model" not in msg and "data rows" not in msg  # the draws change neither


def test_other_draws_are_refused(first_run, monkeypatch):
    msg = refusal(diffusion_config(first_run[0], **{"likelihood.estimator": "length"}))
    assert 'likelihood.estimator="length_stratified", this run has "length"' in msg
    monkeypatch.setattr(reference_cache, "_draw_key", lambda config: jax.random.PRNGKey(config.train.seed + 14))
    msg = refusal(diffusion_config(first_run[0]))
    assert "likelihood.draw_key=[0, 13], this run has [0, 14]" in msg and "reference model" not in msg


def test_another_reference_model_is_refused(first_run, tmp_path):
    config = diffusion_config(first_run[0])
    model, _, _ = reference_inputs(config)
    model.embed_tokens[...] = model.embed_tokens[...].at[0, 0].add(1e-3)  # one parameter, slightly
    msg = refusal(config, model)
    assert "another reference model" in msg and "data rows" not in msg
    with pytest.raises(ConfigError, match=r"another reference model .*made with train\.sft_steps=0 \(this run 1\)"):
        run_train(diffusion_config(first_run[0], **{"train.sft_steps": 1}), str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")  # refused before any preference step


def test_other_data_rows_are_refused(first_run):
    msg = refusal(diffusion_config(first_run[0], **{"data.gym.label_noise": 0.5}))
    assert "other data rows" in msg and "reference model" not in msg


def copy_cache(src, dst):
    dst.mkdir()
    for name in (reference_cache.MANIFEST_FILE, reference_cache.VALUES_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_a_tampered_values_file_is_refused(first_run, tmp_path):
    cache = copy_cache(first_run[0], tmp_path / "cache")
    with open(cache / reference_cache.VALUES_FILE, "r+b") as f:
        f.truncate(100)
    assert "does not match its manifest" in refusal(diffusion_config(cache))
    (cache / reference_cache.MANIFEST_FILE).write_text("{not json")
    assert "unreadable manifest" in refusal(diffusion_config(cache))


def test_values_without_a_manifest_are_recomputed(first_run, tmp_path):
    """A crash between writing the values and the manifest leaves no manifest: not trusted."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / reference_cache.VALUES_FILE).write_bytes(b"half a file")
    values, reused = cached(diffusion_config(cache))
    assert reused is False and (cache / reference_cache.MANIFEST_FILE).exists()
    assert cached(diffusion_config(cache))[1] is True


def test_autoregressive_run_reuses_its_cache(tmp_path):
    c = lambda: quick_config(**{k: v for k, v in TINY.items() if k != "likelihood.n_mc"} | {
        "reference.cache_dir": str(tmp_path / "cache"), "train.sft_steps": 1})
    first = run_train(c(), str(tmp_path / "run1"))
    second = run_train(c(), str(tmp_path / "run2"))
    assert (first["reference_cache_reused"], second["reference_cache_reused"]) == (False, True)
    np.testing.assert_array_equal(losses_of(tmp_path / "run2"), losses_of(tmp_path / "run1"))
    manifest = json.loads((tmp_path / "cache" / reference_cache.MANIFEST_FILE).read_text())
    assert manifest["settings"]["likelihood.kind"] == "autoregressive" and "likelihood.n_mc" not in manifest["settings"]


def test_cache_dir_needs_the_precomputed_mode():
    with pytest.raises(ConfigError, match="config key reference.cache_dir: .*needs reference.mode='precomputed'"):
        validate(quick_config(**{"reference.cache_dir": "/tmp/x", "reference.mode": "copy"}))


def test_fingerprint_ignores_the_mesh_and_sees_a_changed_sampled_leaf(monkeypatch):
    """The same parameters sharded over 8 devices (fsdp × tensor) or on one give one
    fingerprint; with every leaf sampled (a tiny full-hash threshold) a change to the sampled
    element 0 still shows."""
    from pojax.train.run import mesh_and_rules

    config = quick_config(**{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2})
    single = build_model(config, 256, None, None)
    mesh, rules = mesh_and_rules(config)
    sharded = build_model(config, 256, mesh, rules)
    assert reference_cache.params_fingerprint(single) == reference_cache.params_fingerprint(sharded)
    monkeypatch.setattr(reference_cache, "_FULL_HASH_ELEMENTS", 16)
    before = reference_cache.params_fingerprint(single)
    from flax import nnx

    leaves, treedef = jax.tree.flatten(nnx.state(single, nnx.Param))
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].add(1.0)  # element 0 is in every strided sample
    nnx.update(single, jax.tree.unflatten(treedef, leaves))
    assert reference_cache.params_fingerprint(single) != before


def test_bucket_cache_dir_is_refused():
    config = quick_config(**{"reference.mode": "precomputed", "reference.cache_dir": "gs://b/cache"})
    with pytest.raises(ConfigError, match="config key reference.cache_dir: 'gs://b/cache'"):
        validate(config)
