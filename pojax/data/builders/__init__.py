"""TFDS builders that turn preference data downloaded elsewhere into array_record files of
normalized pojax rows, read back with random access (grain) — without TensorFlow.

    sources = prepare("hh_rlhf", "/data/hh-rlhf", "/data/tfds")    # {"train": ..., "test": ...}
    ds = grain.MapDataset.source(sources["train"])                 # ds[i] → a normalized row dict

Builders (each takes the source path and ``data_dir``; see their docstrings for the layouts):
  HhRlhf                  data.format=hh_rlhf                  splits train, test
  UltrafeedbackBinarized  data.format=ultrafeedback_binarized  splits train_prefs, test_prefs
  KtoMix                  data.format=kto_mix                  splits train, test
  LocalPreference         paired | unpaired | ranked | step (any file or directory)
Storage, caching and row order are described in ``base``.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from pojax.data import formats
from pojax.data.builders.base import PreferenceBuilder, RowSource
from pojax.data.builders.hh_rlhf import HhRlhf
from pojax.data.builders.kto_mix import KtoMix
from pojax.data.builders.local import LocalPreference
from pojax.data.builders.ultrafeedback_binarized import UltrafeedbackBinarized

# data.format of an upstream dataset -> its builder
BUILDERS = {"hh_rlhf": HhRlhf, "ultrafeedback_binarized": UltrafeedbackBinarized, "kto_mix": KtoMix}
# every data.format prepare() reads
PREPARE_FORMATS = tuple(BUILDERS) + tuple(f for f in formats.FORMATS if f not in BUILDERS)


def builder(fmt: str, source_path: str, data_dir: str, *, skip_bad_rows: bool = False) -> PreferenceBuilder:
    """The builder of ``fmt`` for ``source_path`` (not yet prepared): an upstream layout's own
    builder, or LocalPreference for pojax's row formats."""
    if fmt in BUILDERS:
        return BUILDERS[fmt](source_path, data_dir=data_dir, skip_bad_rows=skip_bad_rows)
    if fmt in formats.FORMATS:
        return LocalPreference(source_path, row_format=fmt, data_dir=data_dir, skip_bad_rows=skip_bad_rows)
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(PREPARE_FORMATS)}")


def prepare(fmt: str, source_path: str, data_dir: str, *, skip_bad_rows: bool = False) -> dict[str, RowSource]:
    """{split: random-access source of normalized row dicts}, preparing the array_record files
    under ``data_dir`` on the first call for this source (later calls reuse them). Bad rows raise
    formats.DataError naming file, row and field, or with ``skip_bad_rows`` are skipped, logged
    and counted (``RowSource.skipped_rows``)."""
    b = builder(fmt, source_path, data_dir, skip_bad_rows=skip_bad_rows)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig())
    skipped = b.info.metadata.get("skipped_rows", {})
    return {split: RowSource(b.as_data_source(split=split), skipped_rows=skipped.get(split, 0))
            for split in b.SPLITS if split in b.info.splits}


__all__ = ["BUILDERS", "HhRlhf", "KtoMix", "LocalPreference", "PREPARE_FORMATS", "PreferenceBuilder", "RowSource",
           "UltrafeedbackBinarized", "builder", "prepare"]
