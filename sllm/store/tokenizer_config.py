"""The stored copy's ``tokenizer_config.json``, written so that it loads quicker.

transformers 5 saves a tokenizer's added tokens in ``tokenizer.json`` only. Loading a
tokenizer whose config does not list them (``added_tokens_decoder``) takes a legacy
path that parses the whole ``tokenizer.json`` in Python for them, besides the parse
the tokenizers library does anyway: 0.06-0.1 s of each start of the demo model on the
2-core VM, all of it holding the GIL. The stored config lists them, as transformers 4
saved them, and transformers builds the same tokens from either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NAME = "tokenizer_config.json"
# What the legacy path reads besides tokenizer.json: with one of these beside it, the
# config stays as it is (listing the tokens would make transformers skip them).
_LEGACY_FILES = ("special_tokens_map.json", "added_tokens.json")
# The fields of a token in tokenizer.json that transformers' AddedToken takes.
_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def with_added_tokens(config: Any, tokenizer: Any) -> dict[str, Any] | None:
    """``config`` listing the added tokens of ``tokenizer`` (tokenizer.json's content);
    None where it lists them already or they cannot be read as transformers would."""
    if not isinstance(config, dict) or "added_tokens_decoder" in config:
        return None
    added = tokenizer.get("added_tokens") if isinstance(tokenizer, dict) else None
    if not isinstance(added, list) or not added:
        return None
    decoder: dict[str, dict[str, Any]] = {}
    for token in added:
        if not (
            isinstance(token, dict)
            and isinstance(token.get("id"), int)
            and isinstance(token.get("content"), str)
            and set(token) <= {"id", *_TOKEN_FIELDS}
        ):
            return None
        decoder[str(token["id"])] = {k: token[k] for k in _TOKEN_FIELDS if k in token}
    return {**config, "added_tokens_decoder": decoder}


def quicker_copy(source: Path) -> str | None:
    """What to store for the tokenizer config at ``source``, where it can be made
    quicker to load; None to copy it as it is."""
    folder = source.parent
    if source.name != NAME or any((folder / f).exists() for f in _LEGACY_FILES):
        return None
    try:
        config = json.loads(source.read_text(encoding="utf-8"))
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no tokenizer.json, or not JSON: transformers' own path decides
    quicker = with_added_tokens(config, tokenizer)
    return None if quicker is None else json.dumps(quicker, indent=2, ensure_ascii=False) + "\n"
