"""Which requests a model's response cache may answer, and under which key. Pure.

Only deterministic requests: embeddings, and generation that is greedy (``temperature``
0) or sampled with a ``seed`` (``n`` choices of it included: each is seeded apart). A
request that leaves temperature unset is sampled with the model's defaults: not cached.
The key covers the model's version (its config's last update, so an update invalidates
every answer), the endpoint and the whole request but ``user``; a stream and a plain
request are cached apart, each replayed as it was sent.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that do not change the answer.
_IGNORED = ("user",)


def deterministic(endpoint: str, body: dict[str, Any]) -> bool:
    if endpoint.endswith("/embeddings"):
        return True
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(model: str, version: str, endpoint: str, body: dict[str, Any]) -> str | None:
    """The request's key in the model's cache; None when it may not be cached."""
    if not deterministic(endpoint, body):
        return None
    kept = {k: v for k, v in body.items() if k not in _IGNORED}
    text = json.dumps([model, version, endpoint, kept], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
