"""The dummy backend's structured outputs: an instance of a JSON schema, made from the
schema and a seed text alone, so client code that parses and validates answers can be
tested against the dummy. Pure.

Covers what schemas from pydantic and OpenAI's structured outputs use: objects (every
property given), arrays, strings (enum, const, length bounds), numbers and integers
(bounds), booleans, null, ``$ref`` into ``$defs``, ``anyOf``/``oneOf`` (the first
branch, or null below the top) and ``allOf`` (merged). Patterns and formats are not
followed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
# Nesting deeper than this ends in null (a schema may refer to itself).
_MAX_DEPTH = 8


def _draw(seed: str, path: str, modulo: int) -> int:
    digest = hashlib.sha256(f"{seed}|{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(modulo, 1)


def instance(schema: dict[str, Any], seed: str) -> Any:
    """A value that ``schema`` accepts, the same for the same seed."""
    return _value(schema, schema, seed, "$", 0)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part, {}) if isinstance(target, dict) else {}
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _value(node: Any, root: dict[str, Any], seed: str, path: str, depth: int) -> Any:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return None
    node = _resolve(node, root)
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        return node["enum"][_draw(seed, path, len(node["enum"]))]
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if isinstance(branches, list) and branches:
            # An optional field below the top is left null: a model may refer to itself.
            empty = [b for b in branches if isinstance(b, dict) and b.get("type") == "null"]
            branch = empty[0] if empty and depth > 1 else branches[0]
            return _value(branch, root, seed, path, depth + 1)
    if isinstance(node.get("allOf"), list):
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            part = _resolve(part, root) if isinstance(part, dict) else {}
            merged.update(part)
            merged["properties"] = {
                **merged.get("properties", {}),
                **part.get("properties", {}),
            }
        return _value(merged, root, seed, path, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in node else "string"
    return _typed(kind, node, root, seed, path, depth)


def _typed(
    kind: str, node: dict[str, Any], root: dict[str, Any], seed: str, path: str, depth: int
) -> Any:
    if kind == "object":
        properties = node.get("properties") or {}
        return {
            name: _value(sub, root, seed, f"{path}.{name}", depth + 1)
            for name, sub in properties.items()
        }
    if kind == "array":
        low = int(node.get("minItems", 1))
        high = int(node.get("maxItems", max(low, 2)))
        count = low + _draw(seed, path, high - low + 1)
        return [
            _value(node.get("items", {}), root, seed, f"{path}[{i}]", depth + 1)
            for i in range(count)
        ]
    if kind == "integer":
        low, high = _integer_bounds(node)
        return low + _draw(seed, path, high - low + 1)
    if kind == "number":
        low_f, high_f = _number_bounds(node)
        # Strictly inside, so exclusive bounds hold too.
        return low_f + (high_f - low_f) * (1 + _draw(seed, path, 98)) / 100
    if kind == "boolean":
        return bool(_draw(seed, path, 2))
    if kind == "null":
        return None
    word = _WORDS[_draw(seed, path, len(_WORDS))]
    low = int(node.get("minLength", 0))
    text = (word * (low // len(word) + 1))[: max(low, len(word))]
    return text[: int(node.get("maxLength", len(text)))]


def _integer_bounds(node: dict[str, Any]) -> tuple[int, int]:
    low = math.ceil(node["minimum"]) if "minimum" in node else None
    if "exclusiveMinimum" in node:
        low = max(low or -(2**62), math.floor(node["exclusiveMinimum"]) + 1)
    high = math.floor(node["maximum"]) if "maximum" in node else None
    if "exclusiveMaximum" in node:
        high = min(high if high is not None else 2**62, math.ceil(node["exclusiveMaximum"]) - 1)
    if low is None:
        low = 0 if high is None or high >= 100 else high - 100
    return low, max(low, high if high is not None else low + 100)


def _number_bounds(node: dict[str, Any]) -> tuple[float, float]:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if low is None:
        low = 0.0 if high is None or high >= 100 else high - 100
    return float(low), float(high if high is not None else low + 100)
