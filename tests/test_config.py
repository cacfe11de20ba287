"""Every recipe in configs/ builds and validates; validation names the bad key."""
import glob
import importlib.util
import inspect
import os
import re

import pytest

import pojax.losses as L
from pojax.config import (
    LOSS_HPARAMS,
    RUNTIME_LOSS_ARGS,
    ConfigError,
    base_config,
    loss_hparams,
    validate,
)

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
        ("likelihood.chunk_size", 0, "config key likelihood.chunk_size: must be a positive integer"),
        ("likelihood.vocab_chunk_size", -1, "config key likelihood.vocab_chunk_size: must be an integer >= 0"),
        ("loss.name", "dpo2", "config key loss.name: unknown loss 'dpo2'"),
        ("data.format", "sft", r"config key data.format: 'sft' rows \(messages, text, or prompt \+ completion\) hold "
                               "no preferences to train on: task=sft trains on them"),
        ("data.assistant_only_loss", True, r"config key data.assistant_only_loss: True applies to SFT rows "
                                           r"\(data.format=sft\), not data.format='gym'"),
        ("eval.num_samples", -1, "config key eval.num_samples: must be an integer >= 0"),
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


def test_keep_end_is_refused_with_packing():
    config = base_config()
    config.data.format, config.data.max_length, config.data.packing = "paired", 64, True
    config.data.truncation_mode = "keep_end"
    with pytest.raises(ConfigError, match="config key data.truncation_mode: 'keep_end' with data.packing"):
        validate(config)
    config.data.truncation_mode = "keep_start"
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


@pytest.mark.parametrize("name", ["tdpo", "tgdpo", "madpo", "curry_dpo"])
def test_token_level_and_scored_losses_validate_on_the_gym(name):
    config = base_config()
    config.loss.name = name
    validate(config)  # the trainer feeds them (tgdpo's guide path is checked when the run starts)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"loss.name": "tdpo", "reference.mode": "precomputed"},
     "config key reference.mode: 'precomputed': loss 'tdpo' needs the reference's per-token distributions"),
    ({"loss.name": "tgdpo", "reference.mode": "none"}, "config key reference.mode: 'none': loss 'tgdpo' needs"),
    ({"loss.name": "tdpo", "data.packing": True}, "config key data.packing: loss 'tdpo' needs per-pair token rows"),
    ({"loss.name": "tdpo", "likelihood.kind": "diffusion", "model.family": "llada"},
     "config key likelihood.kind: 'diffusion': loss 'tdpo' needs per-token log-probs"),
    ({"loss.name": "tgdpo", "task": "eval"}, "config key loss.name: 'tgdpo' reads guide token rewards"),
    ({"loss.name": "sigmoid", "reference.guide_path": "/ckpt"},
     "config key reference.guide_path: is read by losses 'tgdpo' and 'rto'"),
    ({"loss.name": "madpo", "data.format": "hh_rlhf"}, "config key data.format: 'hh_rlhf': loss 'madpo' needs per-pair scores"),
    ({"loss.name": "curry_dpo", "data.format": "unpaired"}, "config key data.format: 'unpaired': loss 'curry_dpo'"),
    ({"loss.name": "curry_dpo", "data.packing": True}, "config key data.packing: loss 'curry_dpo' reads per-pair scores"),
    ({"loss.name": "madpo", "likelihood.kind": "diffusion", "model.family": "llada"},
     "config key likelihood.kind: 'diffusion': madpo's reward margins"),
])
def test_unfed_token_and_scored_combinations_name_their_key(overrides, message):
    config = base_config()
    for key, value in overrides.items():
        *path, field = key.split(".")
        (config[path[0]] if path else config)[field] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
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
    config.mesh.data, config.mesh.fsdp = -1, 3  # the key the user set, not the one that takes the rest
    with pytest.raises(ConfigError, match="config key mesh.fsdp: mesh.fsdp=3: 8 device"):
        mesh_and_rules(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.completion_end": "eot"}, "config key data.completion_end: 'eot' is not one of eos, none"),
        ({"loss.name": "kto", "data.desirable_fraction": 1.5},
         r"config key data.desirable_fraction: must be a number in \[0, 1\] \(1 = every row of that label\), got 1.5"),
        ({"loss.name": "kto", "data.undesirable_fraction": -0.1},
         r"config key data.undesirable_fraction: must be a number in \[0, 1\]"),
        ({"loss.name": "kto", "data.desirable_fraction": 0.0, "data.undesirable_fraction": 0.0},
         "config key data.desirable_fraction: 0 with data.undesirable_fraction=0 leaves no row to train on"),
        ({"data.desirable_fraction": 0.5}, "config key data.desirable_fraction: below 1 subsamples the desirable / "
                                           "undesirable rows of an unpaired loss .*, not of loss 'sigmoid'"),
    ],
)
def test_completion_end_and_label_fractions_name_their_key(overrides, message):
    config = base_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)
    ok = base_config()  # the ELBO-KTO authors' n_D / n_U on an unpaired loss validate
    ok.loss.name, ok.data.desirable_fraction, ok.data.undesirable_fraction = "kto", 0.1, 0.0
    validate(ok)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"loss.kto_reference_point": "global"}, "config key loss.kto_reference_point: 'global' is not one of kl, "
                                             "batch_mean, zero, running_global, running_class_conditional"),
    ({"loss.kto_reference_point": "running_global", "loss.kto_baseline_ema_decay": 1.0},
     r"config key loss.kto_baseline_ema_decay: 1.0 is not in \[0, 1\)"),
    ({"loss.kto_reference_point": "batch_mean", "loss.kto_centering_group_size": 5},
     r"config key loss.kto_centering_group_size: 5 must be a positive divisor of the micro-batch "
     r"\(train.batch_size / train.grad_accum_steps = 32 rows\)"),
    ({"loss.kto_centering_group_size": 4}, "config key loss.kto_centering_group_size: groups the batch mean; "
                                            "set loss.kto_reference_point=batch_mean \\(it is 'kl'\\)"),
])
def test_kto_reference_point_settings_name_their_key(overrides, message):
    config = base_config()
    config.loss.name, config.train.batch_size = "kto", 32
    for key, value in overrides.items():
        config.loss[key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)
    config = base_config()
    config.loss.name, config.loss.kto_reference_point, config.loss.kto_centering_group_size = "kto", "batch_mean", 8
    validate(config)  # a divisor of the default micro-batch
