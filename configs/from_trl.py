"""A TRL YAML as it is: the file ``trl dpo --config x.yaml`` (or ``trl kto``) reads.

    python -m pojax.main --config=configs/from_trl.py:x.yaml [--workdir=DIR] [--config.<key>=...]

The text after ':' is the YAML's path (ml_collections passes it to get_config). Each key is
mapped to pojax's key with TRL's value, accepted where it changes nothing, or refused with one
line naming it (pojax.trl_config); keys left out take TRL 1.16's defaults. ``trainer: kto | sft | cpo |
orpo`` in the YAML picks KTOConfig / SFTConfig (task=sft on data.format=sft rows) / CPOConfig / ORPOConfig (default: dpo). output_dir is the
run directory unless --workdir is given. --config.<key> overrides apply on top, as for any recipe.
Without ':x.yaml' it reads configs/trl_dpo_example.yaml.
"""
import os

from pojax.trl_config import from_yaml

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_dpo_example.yaml")


def get_config(path=None):
    return from_yaml(path or EXAMPLE)  # no ':x.yaml': TRL's DPO example (its model / data paths are placeholders)
