"""Any of pojax's row formats from local files."""
from __future__ import annotations

import os

from pojax.data.builders.base import PreferenceBuilder, data_files
from pojax.data.formats import DataError


class LocalPreference(PreferenceBuilder, skip_registration=True):
    """Preference rows of one of pojax's formats (paired, unpaired, ranked, step, hh_rlhf) from
    local files.

    Source: a .jsonl / .jsonl.gz / .json / .parquet file (split train), or a directory read
    recursively: when some file names start with "train" or "test", they make those splits (and a
    data file named neither is an error); otherwise every file is split train. Pass the format as
    ``row_format`` (required). Rows: formats.normalize(row, row_format).
    """

    SPLITS = ("train", "test")
    LAYOUT = "a .jsonl, .jsonl.gz, .json or .parquet file, or a directory holding such files"

    def _split_files(self, source: str) -> dict[str, list[str]]:
        files = data_files(source)
        if not os.path.isdir(source):
            return {"train": files}

        def split(f):
            name = os.path.basename(f)
            return next((s for s in self.SPLITS if name.startswith(s)), None)

        if not any(split(f) for f in files):
            return {"train": files}
        stray = [f for f in files if split(f) is None]
        if stray:
            raise DataError(stray[0], None, None, "the directory has train*/test* files, but this file's name "
                            "starts with neither; rename it or move it out")
        return {s: [f for f in files if split(f) == s] for s in self.SPLITS}
