"""Where lora-recipes keeps what it can make again: converted models, tokenized data, hub datasets.

Kept apart from models.py so the data path can find the cache without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$LORA_RECIPES_CACHE, else ~/.cache/lora-recipes."""
    env = os.environ.get("LORA_RECIPES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lora-recipes"
