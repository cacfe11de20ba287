"""Every public error of the loss library, asserted with its message."""
import pytest

import pojax.losses as L
from tests.losses.helpers import random_pair, random_unpaired


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown loss 'dpo2'; known losses: .*sigmoid.*simpo"):
        L.get("dpo2")
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        L.get("sigmoid+nope")


@pytest.mark.parametrize("name", ["sigmoid", "simpo", "kto", "bco", "orpo"])
def test_unknown_hyperparameter_is_a_type_error(name):
    logps = random_unpaired(0) if name in ("kto", "bco") else random_pair(0)
    with pytest.raises(TypeError, match="betta"):
        L.get(name)(logps, betta=0.1)


def test_combined_unknown_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected hyperparameter 'simpo_gamma'"):
        L.get(["sigmoid", "sft"])(random_pair(0), simpo_gamma=1.0)


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "aot", "apo_zero", "nca_pair"])
def test_missing_reference_is_a_clear_error(name):
    logps = random_pair(0).replace(ref_chosen=None, ref_rejected=None)
    with pytest.raises(ValueError, match=f"loss '{name}' needs reference log-probs.*reference-free loss"):
        L.get(name)(logps)


@pytest.mark.parametrize("name", ["kto", "bco", "apo_zero_unpaired"])
def test_unpaired_missing_reference(name):
    with pytest.raises(ValueError, match=f"loss '{name}' needs reference log-probs"):
        L.get(name)(random_unpaired(0).replace(ref_completion=None))


def test_kto_without_mismatched_completions():
    with pytest.raises(ValueError, match="z0 from mismatched completions"):
        L.get("kto")(random_unpaired(0).replace(kl=None))


@pytest.mark.parametrize("name", ["ipo", "simpo", "orpo", "asft", "sft", "cpo_ipo"])
def test_missing_lengths(name):
    logps = random_pair(0).replace(chosen_len=None, rejected_len=None)
    with pytest.raises(ValueError, match=f"loss '{name}' normalizes by completion length"):
        L.get(name)(logps)


def test_reference_free_losses_run_without_reference():
    logps = random_pair(0).replace(ref_chosen=None, ref_rejected=None)
    for name in ("cpo", "cpo_hinge", "cpo_ipo", "simpo", "orpo", "asft", "sft"):
        assert L.get(name)(logps).loss.shape == (8,)
        assert not L.needs_reference(name)
    assert L.needs_reference("sigmoid") and L.needs_reference("simpo+sigmoid")


def test_modifier_errors():
    logps = random_pair(0)
    with pytest.raises(ValueError, match="ld_alpha .LD-DPO. needs PairLogps.chosen_tokens"):
        L.get("sigmoid")(logps, ld_alpha=0.5)
    with pytest.raises(ValueError, match="use_weighting .WPO. needs PairLogps.chosen_tokens"):
        L.get("sigmoid")(logps, use_weighting=True)
    with pytest.raises(ValueError, match="not supported by 'aot': it sorts the batch"):
        L.get("aot")(random_pair(0, tokens=True), use_weighting=True)
    with pytest.raises(ValueError, match="unknown f_divergence_type 'kl'"):
        L.get("sigmoid")(logps, f_divergence_type="kl")
    with pytest.raises(ValueError, match="exo_pair needs 0 < label_smoothing < 1"):
        L.get("exo_pair")(logps, label_smoothing=0.0)


def test_combine_errors():
    logps = random_pair(0)
    with pytest.raises(ValueError, match="loss 'kto' cannot be combined"):
        L.get(["sigmoid", "kto"])
    with pytest.raises(ValueError, match="loss_weights has 1 entries for 2 loss types"):
        L.get(["sigmoid", "sft"])(logps, loss_weights=[1.0])
    with pytest.raises(ValueError, match=r"f_divergence_type='forward_kl' is not supported by \['bco_pair'\]"):
        L.get(["sigmoid", "bco_pair"])(logps, f_divergence_type="forward_kl")


def test_registering_a_name_twice_is_refused():
    from pojax.losses.registry import register

    with pytest.raises(ValueError, match="registered twice"):
        register("sigmoid")(lambda logps: None)
