"""Count tokens offline with tiktoken, using the encodings bundled inside litellm."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

ENCODING = "o200k_base"


def bundled_cache_dir() -> str | None:
    """Return litellm's bundled tiktoken cache directory, found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return str(path) if path.is_dir() else None


@lru_cache(maxsize=1)
def encoding() -> Any:
    """Load the tokenizer once; the cache dir makes this work with no network."""
    cache = bundled_cache_dir()
    if cache and "TIKTOKEN_CACHE_DIR" not in os.environ:
        # tiktoken reads this variable on every load; set it before the first load.
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    import tiktoken

    return tiktoken.get_encoding(ENCODING)


def count(text: str) -> int:
    """Return the number of tokens in ``text``."""
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def estimate(text: str) -> int:
    """Return a cheap upper-leaning estimate (about 3.5 characters a token) without encoding."""
    return (len(text) * 2 + 6) // 7
