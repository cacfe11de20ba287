"""The shared TFDS builder: files a user downloaded elsewhere → normalized pojax rows in
array_record files that grain reads with random access. No TensorFlow needed.

Storage: one feature, ``row`` (tfds.features.Text), holding the row as JSON (the output of
``formats.normalize``). JSON round-trips a row exactly, optional keys included (prompt_text,
prefix, scores); TFDS's typed features would not: float64 scalars come back rounded to float32,
strings come back as bytes and a sequence of messages as a dict of lists.

Each prepared dataset lives in ``<data_dir>/<builder name>/<config name>/<VERSION>/``, where the
config name is ``<row format>_<hash>`` of the source path, the size and mtime of every source file,
skip_bad_rows and VERSION: a changed source is prepared anew, an unchanged one is reused.
Row order is the order of the source (sorted file paths, then rows); shuffling is grain's job.
Bump VERSION whenever ``formats.normalize`` changes the rows it returns.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from pojax.data import formats
from pojax.data.formats import DataError


@dataclasses.dataclass
class SourceConfig(tfds.core.BuilderConfig):
    """Where the rows come from (a file or directory) and how to read them."""
    source: str = ""
    row_format: str = ""  # a formats.FORMATS name
    skip_bad_rows: bool = False
    files: tuple = ()  # ((split, (file, ...)), ...): the source files of each split, in order


class RowSource:
    """Random access to the normalized rows of one prepared split: ``len(s)``, ``s[i]`` → a row
    dict. A grain data source (``grain.MapDataset.source(s)``)."""

    def __init__(self, source, skipped_rows: int = 0):
        self.source = source  # the TFDS ArrayRecordDataSource of encoded {"row": json} examples
        self.skipped_rows = skipped_rows  # bad source rows left out of this split (skip_bad_rows)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return json.loads(self.source[index]["row"])

    def __getitems__(self, indices) -> list[dict]:
        return [json.loads(x["row"]) for x in self.source.__getitems__(indices)]

    def __repr__(self) -> str:
        return f"RowSource({self.source!r})"


def split_token(filename: str) -> str:
    """The split a file's base name names, upstream style: "train.jsonl.gz" → "train",
    "train_prefs-00000-of-00001.parquet" → "train_prefs"."""
    return re.split(r"[.-]", os.path.basename(filename), maxsplit=1)[0]


def data_files(root: str) -> list[str]:
    """Every readable data file under ``root`` (recursive, sorted), or [root] for a file."""
    if not os.path.isdir(root):
        return [root]
    found = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))
        found += [os.path.join(d, n) for n in names if n.endswith(formats.FILE_SUFFIXES)]
    return sorted(found)


class PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of pojax's builders: subclasses set ROW_FORMAT, SPLITS and ``_split_files``."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Normalized pojax rows, stored as JSON text.",
                     "1.1.0": "Rows keep conversational, <field>_messages, tools and chat_template_kwargs."}
    ROW_FORMAT = ""  # the formats.normalize format of the source rows
    SPLITS: tuple[str, ...] = ("train", "test")
    LAYOUT = ""  # the expected source layout, for error messages
    HOMEPAGE = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9's own lookup touches importlib_resources, which it installs only on
        # Python < 3.9 (ModuleNotFoundError in download_and_prepare); the module file suffices.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, source: str | None = None, *, data_dir: str, skip_bad_rows: bool = False,
                 row_format: str | None = None, config: SourceConfig | None = None, **kwargs):
        """Reads ``source`` (a file or directory in the builder's layout); ``config`` instead
        rebuilds a builder whose source was already scanned (unpickling, e.g. in grain workers)."""
        if config is None:
            config = self._source_config(source, row_format or self.ROW_FORMAT, skip_bad_rows)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(config=config, data_dir=data_dir, **kwargs)
        # TFDS pickles a builder as its __init__ arguments; keep the scanned config, not the source
        self._original_state = dict(config=config, data_dir=data_dir, **kwargs)

    def _source_config(self, source: str, fmt: str, skip_bad_rows: bool) -> SourceConfig:
        if source is None:
            raise TypeError(f"{type(self).__name__} needs the source file or directory")
        source = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(source):
            raise DataError.missing(source)
        if fmt not in formats.FORMATS:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(formats.FORMATS)}")
        files = tuple((split, tuple(f)) for split, f in self._split_files(source).items() if f)
        if not files:
            raise DataError(source, 0, "-", f"no data files found; expected {self.LAYOUT}")
        stamp = [str(self.VERSION), fmt, source, skip_bad_rows]
        for split, split_files in files:
            for f in split_files:
                st = os.stat(f)
                stamp.append([split, os.path.relpath(f, source), st.st_size, st.st_mtime_ns])
        digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
        return SourceConfig(name=f"{fmt}_{digest}", description=f"{fmt} rows of {source}", source=source,
                            row_format=fmt, skip_bad_rows=skip_bad_rows, files=files)

    def _split_files(self, source: str) -> dict[str, list[str]]:
        """{split: source files}: files whose base name names one of SPLITS (see split_token);
        a single file is the split it names, else the first of SPLITS."""
        if not os.path.isdir(source):
            token = split_token(source)
            return {token if token in self.SPLITS else self.SPLITS[0]: [source]}
        files = {s: [] for s in self.SPLITS}
        for f in data_files(source):
            if split_token(f) in files:
                files[split_token(f)].append(f)
        return files

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.__doc__}\nRows: pojax's normalized {self.builder_config.row_format!r} rows as JSON.",
            features=tfds.features.FeaturesDict({"row": tfds.features.Text()}),
            homepage=self.HOMEPAGE or None,
            disable_shuffling=True,  # keep the source order; grain shuffles
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the files are already on disk
        return {split: self._generate_examples(split, list(files)) for split, files in self.builder_config.files}

    def _generate_examples(self, split: str, files: list[str]):
        """(index, {"row": JSON}) for every valid row of ``files``, in order; bad rows raise
        formats.DataError or, with skip_bad_rows, are logged and counted in info.metadata."""
        config = self.builder_config
        n, skipped = 0, 0
        for path in files:
            for file, i, row in formats.read_rows(path):
                try:
                    if isinstance(row, DataError):
                        raise row
                    out = formats.normalize(row, config.row_format, file, i)
                except DataError as e:
                    if not config.skip_bad_rows:
                        raise
                    skipped += 1
                    logging.warning("skipped bad row: %s", e)
                    continue
                yield n, {"row": json.dumps(out, ensure_ascii=False)}
                n += 1
        if skipped:
            logging.warning("%s: split %s: skipped %d bad rows of %d", config.source, split, skipped, skipped + n)
        self.info.metadata.setdefault("skipped_rows", {})[split] = skipped
        if not n:
            raise DataError(files[0], 0, "-", f"split {split!r}: no valid rows")
