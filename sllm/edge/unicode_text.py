"""Finding text no backend can encode: strings with lone surrogates.

JSON may escape any UTF-16 code unit (``"\\ud800"``), and Python's JSON decoder turns a
lone surrogate into a ``str`` that cannot be encoded as UTF-8: a tokenizer fails on it,
deep in a backend, after the request was queued (a 502, or a stream's error event).
Request models check their input with ``first_invalid`` before anything else.
"""

from __future__ import annotations

from typing import Any


def _invalid(text: str) -> bool:
    if text.isascii():  # the usual case, checked at C speed
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def first_invalid(value: Any, path: str = "") -> str | None:
    """The dotted path (``messages.0.content``) of the first string or key in ``value``
    that is not valid Unicode, or None; ``path`` prefixes it."""
    if isinstance(value, str):
        return path if _invalid(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _invalid(key):
                # The key itself cannot be named as it is; say where it sits.
                return f"{path}.{key!a}" if path else ascii(key)
            found = first_invalid(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, (str, dict, list)):
                found = first_invalid(item, f"{path}.{index}" if path else str(index))
                if found is not None:
                    return found
    return None
