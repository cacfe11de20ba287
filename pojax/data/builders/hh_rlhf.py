"""Anthropic HH-RLHF from its upstream layout."""
from __future__ import annotations

from pojax.data.builders.base import PreferenceBuilder


class HhRlhf(PreferenceBuilder, skip_registration=True):
    """Anthropic HH-RLHF (helpful and harmless dialogues, chosen vs rejected final assistant turn).

    Source: the upstream directory — <subset>/train.jsonl.gz and <subset>/test.jsonl.gz for
    harmless-base, helpful-base, helpful-online, helpful-rejection-sampled (plain .jsonl too); one
    subset's directory or a single file also works. Files of other names (red-team-attempts/
    red_team_attempts.jsonl.gz, which has no chosen/rejected pairs) are not read. Splits: train,
    test, each the subsets' files in sorted path order. Rows: formats.normalize(row, "hh_rlhf").
    """

    ROW_FORMAT = "hh_rlhf"
    SPLITS = ("train", "test")
    LAYOUT = "HH-RLHF's layout: <subset>/train.jsonl.gz and <subset>/test.jsonl.gz (or .jsonl)"
    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
