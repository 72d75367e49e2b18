"""Whether the Hugging Face hub can be reached, asked once and quickly.

Without this check an offline `from_pretrained` or `load_dataset` retries for most of a minute
(measured: 46 s for a tokenizer) before it fails, and `plan` must not hang.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

PROBE_TIMEOUT_S = 3.0


def offline_mode() -> bool:
    """The user asked the Hugging Face libraries to use their local caches only."""
    from huggingface_hub import constants

    datasets_offline = os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or datasets_offline


@functools.cache
def unreachable_reason() -> str | None:
    """None when the hub answers; otherwise why not, in a few words."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        # Any answer at all (even an error status) means the network path works; the session
        # honours the proxy settings the libraries themselves would use.
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # the HTTP client's own error classes vary by version
        return f"{constants.ENDPOINT} did not answer ({str(exc) or type(exc).__name__})"
    return None


def cached_snapshot(repo_id: str, revision: str | None, filename: str) -> Path | None:
    """The local hub-cache folder of `repo_id` that holds `filename`, if one was downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Path(found).parent if isinstance(found, str) else None
