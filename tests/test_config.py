"""Every recipe in configs/ builds and validates; validation names the bad key."""
import glob
import importlib.util
import inspect
import os

import pytest

import pojax.losses as L
from pojax.config import LOSS_HPARAMS, RUNTIME_LOSS_ARGS, ConfigError, base_config, loss_hparams, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_there_are_recipes():
    assert any(p.endswith("quickstart.py") for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_builds_and_validates(path):
    validate(load(path))


def test_every_loss_hyperparameter_is_a_config_key():
    for name in L.names():
        for p in inspect.signature(L.get(name)).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in RUNTIME_LOSS_ARGS:
                assert p.name in LOSS_HPARAMS, (name, p.name)


def test_unset_loss_keys_are_left_to_the_loss():
    config = base_config()
    assert loss_hparams(config) == {"beta": 0.1}
    config.loss.label_smoothing = 0.2
    assert loss_hparams(config) == {"beta": 0.1, "label_smoothing": 0.2}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task", "fly", "config key task: 'fly' is not one of sft"),
        ("data.format", "csv", "config key data.format: 'csv' is not one of"),
        ("reference.mode", "twin", "config key reference.mode: 'twin'"),
        ("likelihood.kind", "exact", "config key likelihood.kind: 'exact'"),
        ("train.max_steps", 0, "config key train.max_steps: must be a positive integer"),
        ("mesh.fsdp", 0, "config key mesh.fsdp: must be a positive integer or -1"),
        ("loss.name", "dpo2", "config key loss.name: unknown loss 'dpo2'"),
        ("loss.simpo_gamma", 1.0, "config key loss.simpo_gamma: loss 'sigmoid' has no hyperparameter 'simpo_gamma'"),
    ],
)
def test_bad_values_name_their_key(key, value, message):
    config = base_config()
    section, _, field = key.partition(".")
    if field:
        config[section][field] = value
    else:
        config[section] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_reference_free_mode_needs_a_reference_free_loss():
    config = base_config()
    config.reference.mode = "none"
    with pytest.raises(ConfigError, match="reference.mode: 'none', but loss 'sigmoid' needs reference log-probs"):
        validate(config)
    config.loss.name = "simpo"
    validate(config)


def test_paired_and_unpaired_must_match():
    config = base_config()
    config.loss.name = "kto"
    validate(config)  # the gym serves both
    config.data.format = "paired"
    validate(config)  # paired rows are unpaired for it (chosen desirable, rejected undesirable)
    config.data.format = "step"
    with pytest.raises(ConfigError, match="'kto' does not take paired data"):
        validate(config)
    config.data.format = "kto_mix"
    validate(config)
    config.loss.name = "sigmoid"
    with pytest.raises(ConfigError, match="'sigmoid' does not take unpaired data"):
        validate(config)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("likelihood.kind", "diffusion", "config key model.family: 'llama': likelihood.kind='diffusion' needs a masked-diffusion model"),
])
def test_unimplemented_training_switches_are_refused(key, value, message):
    config = base_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_precomputed_reference_with_ld_alpha_is_refused():
    config = base_config()
    config.reference.mode = "precomputed"
    config.loss.ld_alpha = 0.5
    with pytest.raises(ConfigError, match="config key loss.ld_alpha: LD-DPO with reference.mode='precomputed'"):
        validate(config)


def test_two_rest_axes_are_refused():
    config = base_config()
    config.mesh.fsdp = -1
    with pytest.raises(ConfigError, match="config key mesh: at most one axis may be -1"):
        validate(config)


@pytest.mark.parametrize("name", ["tdpo", "tgdpo", "madpo"])
def test_losses_the_trainer_cannot_feed_yet_are_refused_by_key(name):
    config = base_config()
    config.loss.name = name
    with pytest.raises(ConfigError, match="config key loss.name"):
        validate(config)


def test_listwise_losses_take_ranked_or_gym_data_only():
    config = base_config()
    config.loss.name = "plackett_luce"
    validate(config)  # the gym serves ranked sets
    config.data.format = "paired"
    with pytest.raises(ConfigError, match="config key loss.name: 'plackett_luce' does not take data.format='paired'"):
        validate(config)
    config.data.format, config.loss.name = "ranked", "sigmoid"
    with pytest.raises(ConfigError, match="config key loss.name: 'sigmoid' does not take data.format='ranked'"):
        validate(config)


def test_a_mesh_that_does_not_fit_the_devices_names_its_key_before_compiling():
    from pojax.train.run import mesh_and_rules

    config = base_config()
    config.mesh.data, config.mesh.fsdp = 3, 1  # 8 host devices in tests
    with pytest.raises(ConfigError, match="config key mesh"):
        mesh_and_rules(config)
    config.mesh.data, config.mesh.fsdp = -1, 3
    with pytest.raises(ConfigError, match="config key mesh.data"):
        mesh_and_rules(config)
