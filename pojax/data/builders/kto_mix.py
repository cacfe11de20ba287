"""kto-mix-14k (trl-lib/kto-mix-14k) from its upstream layout."""
from __future__ import annotations

from pojax.data.builders.base import PreferenceBuilder


class KtoMix(PreferenceBuilder, skip_registration=True):
    """kto-mix-14k: unpaired completions labelled desirable or undesirable.

    Source: the upstream directory — data/train-*.parquet and data/test-*.parquet with columns
    prompt (a list of messages), completion (a list holding the assistant's message) and label
    (bool). Splits: train, test. Rows: formats.normalize(row, "unpaired").
    """

    ROW_FORMAT = "unpaired"
    SPLITS = ("train", "test")
    LAYOUT = "kto-mix-14k's layout: data/train-*.parquet and data/test-*.parquet"
    HOMEPAGE = "https://huggingface.co/datasets/trl-lib/kto-mix-14k"
