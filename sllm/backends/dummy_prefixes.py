"""The dummy's prefix cache: which prompt prefixes an instance has prefilled, so that
its ``prefill_per_word`` cost falls on the new words only, as in a model server that
keeps prefixes (vLLM's automatic prefix caching). Pure."""

from __future__ import annotations

from collections import OrderedDict

# Prefixes remembered (one entry per word of each prompt), the least recently used
# forgotten first: about 100 bytes each.
LIMIT = 50_000


class PrefixCache:
    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._seen: OrderedDict[int, None] = OrderedDict()

    def prefill(self, words: list[str]) -> int:
        """How many of ``words`` lie past the longest prefix prefilled before; every
        prefix of them is remembered from now on."""
        hashes: list[int] = []
        h = 0
        for word in words:
            h = hash((h, word))
            hashes.append(h)
        cached = 0
        for h in hashes:
            if h not in self._seen:
                break
            self._seen.move_to_end(h)
            cached += 1
        for h in hashes[cached:]:
            self._seen[h] = None
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return len(words) - cached
