"""pojax.trl_config against TRL 1.16's own parser: the same YAML read by TrlParser (the dataclasses
``trl dpo --config x.yaml`` builds) and by pojax; every key TRL parsed is mapped to the pojax key
with TRL's value (a hand-written table of pairs), accepted as changing nothing, or refused with
one line naming it. TRL's defaults (the dataclasses' own) apply to keys the YAML leaves out."""
import dataclasses
import math
import os
import warnings

import pytest
import yaml

from pojax import trl_config
from pojax.config import ConfigError, validate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl import DatasetMixtureConfig, DPOConfig, KTOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

CLASSES = {"dpo": DPOConfig, "kto": KTOConfig, "sft": SFTConfig, "cpo": CPOConfig, "orpo": ORPOConfig}

DPO_YAML = {
    "model_name_or_path": "/ckpt/llama", "dataset_name": "/data/prefs.jsonl", "loss_type": ["sigmoid", "hinge"],
    "loss_weights": [1.0, 0.25], "beta": 0.05, "label_smoothing": 0.1, "f_divergence_type": "js_divergence",
    "use_weighting": False, "learning_rate": 5.0e-7, "lr_scheduler_type": "cosine", "warmup_steps": 0.1,
    "weight_decay": 0.01, "adam_beta1": 0.8, "adam_beta2": 0.95, "max_grad_norm": 0.5,
    "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "max_steps": 120, "num_train_epochs": 1,
    "max_length": 512, "truncation_mode": "keep_start", "output_dir": "/runs/dpo", "logging_steps": 5,
    "eval_strategy": "steps", "eval_steps": 20, "save_steps": 40, "save_total_limit": 2, "seed": 7, "bf16": True,
    "gradient_checkpointing": False, "precompute_ref_log_probs": False, "padding_free": True, "pad_to_multiple_of": 8,
    "sync_ref_model": True, "ref_model_mixup_alpha": 0.9, "ref_model_sync_steps": 64, "report_to": "none",
    "run_name": "dpo-run", "dataset_num_proc": 4, "metric_for_best_model": "rewards/accuracies",
    "disable_dropout": True, "attn_implementation": "sdpa", "dtype": "bfloat16",
}
KTO_YAML = {
    "trainer": "kto", "model_name_or_path": "/ckpt/llama", "dataset_name": "/data/kto.jsonl", "loss_type": "kto",
    "beta": 0.2, "desirable_weight": 1.33, "undesirable_weight": 1.0, "learning_rate": 5.0e-7,
    "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 10, "per_device_train_batch_size": 4,
    "max_steps": 50, "max_length": 256, "precompute_ref_log_probs": True, "bf16": False, "seed": 3,
    "save_steps": 25, "logging_steps": 1,
}
CPO_YAML = {
    "trainer": "cpo", "model_name_or_path": "/ckpt/llama", "datasets": [{"path": "json", "data_files": "/data/p.jsonl"}],
    "loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.8, "cpo_alpha": 0.5, "label_smoothing": 0.0,
    "learning_rate": 1.0e-6, "lr_scheduler_type": "constant", "warmup_steps": 10, "max_steps": 30, "max_length": 256,
    "max_completion_length": 128, "save_steps": 0.5,
}
SFT_YAML = {
    "trainer": "sft", "model_name_or_path": "/ckpt/qwen", "dataset_name": "/data/chats.jsonl", "loss_type": "nll",
    "assistant_only_loss": True, "completion_only_loss": False, "max_length": 2048, "truncation_mode": "keep_end",
    "learning_rate": 2.0e-5, "lr_scheduler_type": "cosine", "warmup_steps": 0.03, "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2, "max_steps": 100, "padding_free": True, "packing": False,
    "dataset_text_field": "text", "shuffle_dataset": True, "bf16": True, "seed": 1, "save_steps": 50,
}
ORPO_YAML = {"trainer": "orpo", "model_name_or_path": "/ckpt/llama", "dataset_name": "/data/p.jsonl", "beta": 0.25,
             "max_steps": 10, "lr_scheduler_type": "linear", "warmup_steps": 2}

same = lambda v, args: v
# TRL key → (pojax key, the pojax value as a function of TRL's parsed value and all of TRL's args)
EXPECTED = {
    "model_name_or_path": ("model.path", same), "dataset_name": ("data.path", same),
    "datasets": ("data.path", lambda v, a: v[0].data_files),
    "learning_rate": ("optimizer.learning_rate", same), "weight_decay": ("optimizer.weight_decay", same),
    "adam_beta1": ("optimizer.b1", same), "adam_beta2": ("optimizer.b2", same),
    "max_grad_norm": ("optimizer.max_grad_norm", same),
    "lr_scheduler_type": ("optimizer.schedule", lambda v, a: {"constant_with_warmup": "constant"}.get(v.value, v.value)),
    # transformers' own count of warm-up steps; its "constant" schedule has none
    "warmup_steps": ("optimizer.warmup_steps",
                     lambda v, a: 0 if a.lr_scheduler_type.value == "constant" else a.get_warmup_steps(a.max_steps)),
    "per_device_train_batch_size": ("train.batch_size", lambda v, a: v * a.gradient_accumulation_steps),
    "gradient_accumulation_steps": ("train.grad_accum_steps", same), "max_steps": ("train.max_steps", same),
    "seed": ("train.seed", same), "logging_steps": ("logging.every_steps", lambda v, a: int(v)),
    "eval_steps": ("eval.every_steps", lambda v, a: int(v)),
    "save_steps": ("checkpoint.every_steps", lambda v, a: math.ceil(a.max_steps * v) if v < 1 else int(v)),
    "save_total_limit": ("checkpoint.keep", same),
    "metric_for_best_model": ("checkpoint.best_metric", lambda v, a: "eval_" + v),
    "bf16": ("model.dtype", lambda v, a: "bfloat16" if v or a.dtype == "bfloat16" else "float32"),
    "dtype": ("model.dtype", lambda v, a: "bfloat16" if v == "bfloat16" or a.bf16 else "float32"),
    "gradient_checkpointing": ("model.remat", lambda v, a: "full" if v else "none"),
    "max_length": ("data.max_length", same), "truncation_mode": ("data.truncation_mode", same),
    "padding_free": ("data.packing", same),
    "precompute_ref_log_probs": ("reference.mode", lambda v, a: "precomputed" if v else "copy"),
    "sync_ref_model": ("reference.sync_ref_model", same),
    "ref_model_mixup_alpha": ("reference.ref_model_mixup_alpha", same),
    "ref_model_sync_steps": ("reference.ref_model_sync_steps", same),
    "output_dir": ("output_dir", same),
    "loss_weights": ("loss.loss_weights", lambda v, a: tuple(v)),
    "eval_strategy": ("eval.num_examples", lambda v, a: 0 if v.value == "no" else 64),  # 64: base_config's
    "completion_only_loss": ("data.completion_only_loss", lambda v, a: True if v is None else v),
    "assistant_only_loss": ("data.assistant_only_loss", same),
    **{k: (f"loss.{k}", same) for k in ("beta", "label_smoothing", "f_divergence_type", "use_weighting",
                                        "desirable_weight", "undesirable_weight", "simpo_gamma", "cpo_alpha")},
}
LOSS_NAMES = {("sft", "nll"): "sigmoid",  # task=sft trains the token NLL whatever loss.name says
              ("dpo", ("sigmoid", "hinge")): "sigmoid+hinge", ("dpo", ("sigmoid",)): "sigmoid", ("kto", "kto"): "kto", ("cpo", "simpo"): "simpo"}
# accepted as changing nothing pojax computes (pojax.trl_config.NO_EFFECT says why)
NO_EFFECT = {"max_completion_length",  # CPO / ORPO: read for encoder-decoder models only
             "num_train_epochs", "pad_to_multiple_of", "report_to", "run_name", "dataset_num_proc", "disable_dropout",
             "attn_implementation", "packing", "dataset_text_field", "shuffle_dataset"}


class Args:
    """TRL's parsed fields by name; methods (get_warmup_steps) of its TrainingArguments."""

    def __init__(self, values: dict, training_args):
        self.__dict__.update(values)
        self.get_warmup_steps = training_args.get_warmup_steps


def trl_parse(trainer: str, path, *extra) -> tuple[dict, list, Args]:
    """(field → value of TRL's parsed dataclasses, the YAML keys TRL left unparsed, Args), as `trl
    <trainer> --config path` reads them. --use_cpu: TrainingArguments refuses bf16 on a host without
    a GPU."""
    parser = TrlParser((ScriptArguments, CLASSES[trainer], ModelConfig, DatasetMixtureConfig))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        *parsed, remaining = parser.parse_args_and_config(["--config", str(path), "--use_cpu", "true", *extra],
                                                          return_remaining_strings=True)
    values = {}
    for obj in parsed:
        values.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    return values, [s[2:] for s in remaining if s.startswith("--")], Args(values, parsed[1])


def write(tmp_path, data: dict, name="x.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def get(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "trl_dpo_example.yaml")


@pytest.mark.parametrize(("trainer", "data"), [("dpo", DPO_YAML), ("kto", KTO_YAML), ("sft", SFT_YAML), ("cpo", CPO_YAML),
                                               ("orpo", ORPO_YAML), ("dpo", EXAMPLE)])
def test_every_key_trl_parses_is_mapped_with_trls_value(tmp_path, trainer, data):
    """The three hand-written YAMLs and configs/trl_dpo_example.yaml (configs/from_trl.py's default)."""
    if isinstance(data, str):
        with open(data) as f:
            data = yaml.safe_load(f)
    path = write(tmp_path, data)
    values, unparsed, args = trl_parse(trainer, path)
    assert unparsed == (["trainer"] if "trainer" in data else [])  # TRL's CLI ignores pojax's trainer key
    config = trl_config.from_yaml(str(path))
    validate(config)
    for key in data:
        if key == "trainer":
            continue
        if key == "loss_type":
            v = values[key]
            assert config.loss.name == LOSS_NAMES[(trainer, tuple(v) if isinstance(v, list) else v)]
            continue
        assert key in EXPECTED or key in NO_EFFECT, f"{key}: neither mapped nor accepted by the test's table"
        if key in EXPECTED:
            pojax_key, want = EXPECTED[key]
            if trainer == "sft" and key == "padding_free":  # SFT pads per row: no pair packing, the same values
                assert config.data.packing is False
                continue
            assert get(config, pojax_key) == want(values[key], args), key
    if trainer == "sft":
        assert (config.task, config.data.format) == ("sft", "sft")
    if trainer == "orpo":
        assert config.loss.name == "orpo" and config.loss.beta == values["beta"]
    if trainer in ("cpo", "orpo"):
        assert config.reference.mode == "none"


@pytest.mark.parametrize("trainer", ["dpo", "kto", "sft", "cpo", "orpo"])
def test_defaults_are_trls(tmp_path, trainer):
    """pojax's table of TRL defaults equals the dataclasses' (as parsed from a YAML that sets only
    the paths), and a YAML that leaves a key out gets TRL's default in the pojax config."""
    data = {"model_name_or_path": "/m", "dataset_name": "/d.jsonl", "max_steps": 10}
    if trainer != "dpo":
        data["trainer"] = trainer
    path = write(tmp_path, data)
    values, _, args = trl_parse(trainer, path)
    for key, default in trl_config.DEFAULTS[trainer].items():
        if key in data:
            continue
        got = getattr(values[key], "value", values[key])  # enums (lr_scheduler_type, eval_strategy)
        assert got == default, key
    config = trl_config.from_yaml(str(path))
    for key in ("learning_rate", "lr_scheduler_type", "warmup_steps", "seed", "logging_steps", "save_steps",
                "max_length", "bf16", "gradient_checkpointing", "output_dir", "eval_strategy"):
        pojax_key, want = EXPECTED[key]
        assert get(config, pojax_key) == want(values[key], args), key
    assert config.train.batch_size == values["per_device_train_batch_size"] == 8
    assert config.checkpoint.keep == 1  # save_total_limit None: every checkpoint (10 steps, every 500)


def test_every_table_key_is_a_trl_field():
    """The keys pojax maps, accepts or refuses are fields of TRL 1.16's dataclasses (no typos):
    all but ``env`` (TrlParser's own) and ``warmup_ratio``-like keys that TRL dropped."""
    fields = {f.name for cls in (*CLASSES.values(), ScriptArguments, ModelConfig, DatasetMixtureConfig)
              for f in dataclasses.fields(cls)}
    keys = (set(trl_config.MAPPED) | set(trl_config.NO_EFFECT) | set(trl_config.REFUSED)
            | set(trl_config._PEFT_ONLY) | {k for d in trl_config.DEFAULTS.values() for k in d})
    assert keys - fields == {"env"}


BASE = {"model_name_or_path": "/m", "dataset_name": "/d.jsonl", "max_steps": 10}


@pytest.mark.parametrize(("extra", "key", "match"), [
    ({"use_peft": True}, "use_peft", "reference.mode=lora_base"),
    ({"warmup_ratio": 0.1}, "warmup_ratio", "pojax has no equivalent"),  # transformers 5 dropped it (TRL ignores it)
    ({"desirable_weight": 1.2}, "desirable_weight", "set 'trainer: kto'"),
    ({"cpo_alpha": 1.2}, "cpo_alpha", "set 'trainer: cpo'"),
    ({"lr_scheduler_type": "cosine_with_restarts"}, "lr_scheduler_type", "pojax's schedules are linear, cosine"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing", "loss 'ipo' does not read it"),
    ({"discopop_tau": 0.1}, "discopop_tau", "loss 'sigmoid' does not read it"),
    ({"fp16": True, "bf16": False}, "fp16", "bfloat16 or float32"),
    ({"eval_strategy": "epoch"}, "eval_strategy", "'epoch'"),
    ({"report_to": "comet_ml"}, "report_to", "metrics.jsonl and TensorBoard"),
    ({"optim": "sgd"}, "optim", "AdamW"),
    ({"adam_epsilon": 1e-6}, "adam_epsilon", "1e-08"),
    ({"max_length": None}, "max_length", "give max_length"),
    ({"sync_ref_model": True, "precompute_ref_log_probs": True}, "sync_ref_model", "TRL refuses this too"),
    ({"max_steps": -1}, "max_steps", "set max_steps > 0"),
    ({"max_steps": -1, "num_train_epochs": 2}, "num_train_epochs", "set max_steps > 0"),
    ({"dataset_config": "default"}, "dataset_config", "local file or directory"),
    ({"disable_dropout": False}, "disable_dropout", "no dropout"),
    ({"env": {"A": "1"}}, "env", "environment variables"),
    ({"datasets": [{"path": "json", "data_files": "/a.jsonl"}, {"path": "json", "data_files": "/b.jsonl"}]},
     "datasets", "mixtures are not supported"),
    ({"trainer": "ppo"}, "trainer", "not one of dpo, kto, sft, cpo, orpo"),
    ({"trainer": "sft", "packing": True}, "packing", "pads each SFT row"),
    ({"padding_free": True, "truncation_mode": "keep_end"}, "padding_free", "use keep_start"),
    ({"trainer": "sft", "loss_type": "dft"}, "loss_type", "token NLL"),
    ({"trainer": "sft", "eval_strategy": "steps"}, "eval_strategy", "does not evaluate"),
    ({"assistant_only_loss": True}, "assistant_only_loss", "set 'trainer: sft'"),
    ({"loss_weights": [0.5]}, "loss_weights", "scales a single loss"),
    ({"dtype": "float16"}, "dtype", "bfloat16 and float32"),
])
def test_refused_keys_name_themselves(tmp_path, extra, key, match):
    path = write(tmp_path, {**BASE, **extra})
    with pytest.raises(ConfigError, match=f"^config key trl_yaml: {path}: key '{key}': .*{match}"):
        trl_config.from_yaml(str(path))


def test_report_to_wandb_turns_on_wandb_logging_with_the_run_name(tmp_path):
    config = trl_config.from_yaml(str(write(tmp_path, {**BASE, "report_to": ["wandb"], "run_name": "dpo-7b"})))
    assert config.logging.wandb is True and config.logging.wandb_name == "dpo-7b"
    assert trl_config.from_yaml(str(write(tmp_path, {**BASE, "report_to": "none"}))).logging.wandb is False


def test_kto_only_key_and_train_sampling_strategy(tmp_path):
    path = write(tmp_path, {**BASE, "trainer": "kto", "train_sampling_strategy": "random"})
    with pytest.raises(ConfigError, match="key 'train_sampling_strategy': pojax shuffles"):
        trl_config.from_yaml(str(path))
    path = write(tmp_path, {**BASE, "trainer": "kto", "truncation_mode": "keep_end"})
    with pytest.raises(ConfigError, match="key 'truncation_mode': is a field of TRL's DPOConfig"):
        trl_config.from_yaml(str(path))


def test_missing_or_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=f"^config key trl_yaml: {tmp_path}/nope.yaml: no such file$"):
        trl_config.from_yaml(str(tmp_path / "nope.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        trl_config.from_yaml(str(tmp_path / "list.yaml"))
