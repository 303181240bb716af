"""Corpus preparation and data loading: documents -> token files -> batches.

`prepare_dataset` encodes a dataset into `train.bin` / `val.bin` token files plus `meta.json`;
`TokenFile` memory-maps one; `TokenLoader` cuts it into (inputs, targets) batches and resumes
exactly from its `state_dict()`. See docs/data.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minillama.data.prepare import check_prepared, prepare_dataset, read_meta, tokenizer_fingerprint
from minillama.data.sources import (
    DATASETS,
    FileSource,
    HubSource,
    dataset_text_files,
    load_documents,
    resolve_dataset,
)
from minillama.data.tokenfile import TokenFile, TokenFileWriter, write_token_file
from minillama.lazy import lazy_attributes

if TYPE_CHECKING:
    from minillama.data.loader import TokenLoader, windows_of

__all__ = [
    "DATASETS",
    "FileSource",
    "HubSource",
    "TokenFile",
    "TokenFileWriter",
    "TokenLoader",
    "check_prepared",
    "dataset_text_files",
    "load_documents",
    "prepare_dataset",
    "read_meta",
    "resolve_dataset",
    "tokenizer_fingerprint",
    "windows_of",
    "write_token_file",
]
# The loader needs torch; importing it lazily keeps `prepare`'s worker processes light.
__getattr__ = lazy_attributes(__name__, {"TokenLoader": "minillama.data.loader", "windows_of": "minillama.data.loader"})
