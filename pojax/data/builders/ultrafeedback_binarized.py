"""UltraFeedback-binarized (HuggingFaceH4/ultrafeedback_binarized) from its upstream layout."""
from __future__ import annotations

from pojax.data.builders.base import PreferenceBuilder


class UltrafeedbackBinarized(PreferenceBuilder, skip_registration=True):
    """UltraFeedback, binarized: per prompt the best-rated completion vs a random other one.

    Source: the upstream directory — data/train_prefs-00000-of-00001.parquet and
    data/test_prefs-*.parquet with columns prompt, prompt_id, chosen, rejected (conversations
    that include the prompt turn), messages, score_chosen, score_rejected. The *_sft and *_gen
    splits are not read. Splits: train_prefs, test_prefs (named as upstream). Rows:
    formats.normalize(row, "paired"): prompt, chosen, rejected (the final assistant turns),
    prompt_text, score_chosen, score_rejected.
    """

    ROW_FORMAT = "paired"
    SPLITS = ("train_prefs", "test_prefs")
    LAYOUT = "UltraFeedback-binarized's layout: data/train_prefs-*.parquet and data/test_prefs-*.parquet"
    HOMEPAGE = "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized"
