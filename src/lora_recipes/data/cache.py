"""The tokenized-data cache: one safetensors file per key under `cache_root()/tokenized`.

safetensors holds only arrays and a text header, so a cache file cannot run code when read (no
pickle). The key (see `pipeline.cache_key`) covers the data's content, the rendered prompts and
answers, the tokenizer and the max-length setting; the header repeats it and a file whose header
disagrees, or that cannot be read, is ignored and rewritten. Writes go to a temporary file in the
same folder and are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from lora_recipes.atomic import widen_to_umask
from lora_recipes.data.types import TokenizedSplit
from lora_recipes.paths import cache_root

FORMAT = "lora-recipes-tokenized-1"


def cache_dir() -> Path:
    return cache_root() / "tokenized"


def _arrays(split: TokenizedSplit) -> dict[str, np.ndarray]:
    lengths = np.fromiter((len(ids) for ids in split.input_ids), dtype=np.int64, count=len(split))
    offsets = np.zeros(len(split) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for ids in split.input_ids for t in ids), dtype=np.int64, count=int(offsets[-1]))
    return {
        f"{split.name}.input_ids": flat,
        f"{split.name}.offsets": offsets,
        f"{split.name}.prompt_lengths": np.asarray(split.prompt_lengths, dtype=np.int64),
        f"{split.name}.rows": np.asarray(split.rows, dtype=np.int64),
    }


def _split(name: str, arrays: dict[str, np.ndarray], counts: dict[str, int]) -> TokenizedSplit:
    flat = arrays[f"{name}.input_ids"].tolist()
    offsets = arrays[f"{name}.offsets"].tolist()
    if offsets[-1] != len(flat) or len(offsets) - 1 != len(arrays[f"{name}.prompt_lengths"]):
        raise ValueError("inconsistent arrays")
    input_ids = [flat[a:b] for a, b in itertools.pairwise(offsets)]
    return TokenizedSplit(
        name=name,
        input_ids=input_ids,
        prompt_lengths=arrays[f"{name}.prompt_lengths"].tolist(),
        rows=arrays[f"{name}.rows"].tolist(),
        truncated_rows=counts["truncated_rows"],
        dropped_rows=counts["dropped_rows"],
    )


def save(key: str, splits: list[TokenizedSplit], meta: dict[str, Any]) -> Path:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.safetensors"
    arrays: dict[str, np.ndarray] = {}
    for split in splits:
        arrays.update(_arrays(split))
    header = {
        "format": FORMAT,
        "key": key,
        "splits": json.dumps(
            {s.name: {"truncated_rows": s.truncated_rows, "dropped_rows": s.dropped_rows} for s in splits}
        ),
        "meta": json.dumps(meta),
    }
    fd, tmp = tempfile.mkstemp(prefix=".writing-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=header)
        widen_to_umask(Path(tmp))  # mkstemp's 0600 would keep the cache from a teammate sharing it
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(key: str) -> tuple[dict[str, TokenizedSplit], dict[str, Any]] | None:
    """The cached splits and metadata for `key`, or None when there is no sound file for it."""
    path = cache_dir() / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
        if header.get("format") != FORMAT or header.get("key") != key:
            return None
        arrays = load_file(str(path))
        counts = json.loads(header["splits"])
        splits = {name: _split(name, arrays, c) for name, c in counts.items()}
        meta: dict[str, Any] = json.loads(header["meta"])
    except (OSError, SafetensorError, KeyError, ValueError):
        return None  # unreadable or from another version: tokenize again and overwrite it
    return splits, meta
