"""Incremental detokenization: text deltas for a growing list of token ids.

Decoding each token alone breaks words whose bytes span tokens (a multi-byte
character shows as U+FFFD) and loses the spaces some tokenizers attach to the next
token. So each step decodes a short window that starts a few tokens back and emits
only what the newest tokens added, holding back text that ends in a partial character.
"""

from __future__ import annotations

from typing import Any

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Any) -> None:
        # Any transformers tokenizer: only decode(ids, skip_special_tokens=...) is used.
        self._tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # tokens before this are already emitted

    def _text(self, start: int, end: int | None = None) -> str:
        return self._tok.decode(self.ids[start:end], skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; the text it completes (possibly empty)."""
        self.ids.append(token_id)
        before = self._text(self._prefix, self._read)
        after = self._text(self._prefix)
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]
