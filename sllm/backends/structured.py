"""Structured outputs: a request's ``response_format`` as a JSON schema, and the grammar
engine that holds a transformers model's decoding to it (the onnx backend hands the
schema to the same engine inside ONNX Runtime GenAI: ``guidance_of``).

The engine is llguidance, picked by measurement (``benchmarks/grammar_engines.py``, on
the demo model's 49,152-token vocabulary on the 2-core VM, steady state): 0.18 ms a
token median (0.27 p90) to compute and apply the allowed-token mask and advance, and
1.5 ms to compile a schema, against xgrammar's 0.25 ms (0.29 p90) and 9.8 ms and
outlines-core's 0.10 ms median but 9.7 ms p90 and 115 ms a schema; and it is 8 MB with
no dependencies, where xgrammar pulls in triton (1 GB). Its one cost is its first use in
a process (taking in the vocabulary, then the first mask: about 4 s for SmolLM2, against
xgrammar's 0.4 s), paid by the first structured request, not by every cold start.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from sllm.edge.errors import RequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# What ``json_object`` asks for: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}
# Compact JSON, without whitespace: a small model held to a grammar that allows any
# can spend its whole token budget on spaces and newlines.
COMPACT: JsonCompileOptions = {"whitespace_flexible": False}
# JSON laid out as the model likes. The demo model at int4 (onnx) held to compact JSON
# ran on in digits after "age":3 until max_tokens in 4 of 6 prompts (it wants a newline
# after a number), and closed all 6 with whitespace allowed.
FLEXIBLE: JsonCompileOptions = {"whitespace_flexible": True}


def schema_of(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` holds answers to; None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(
                "response_format json_schema needs json_schema.schema, a JSON schema object",
                param="response_format",
            )
        return schema
    raise RequestError(
        "response_format type must be text, json_object or json_schema",
        param="response_format",
    )


def grammar_of(schema: dict[str, Any], layout: JsonCompileOptions) -> str:
    """The schema as llguidance's grammar; RequestError naming the part it cannot
    compile."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=layout)
        error = llguidance.LLMatcher.validate_grammar(grammar)
    except (ValueError, TypeError) as exc:
        error = str(exc)
    if error:
        raise RequestError(
            f"the response_format schema cannot be enforced: {' '.join(error.split())}",
            param="response_format",
        )
    return str(grammar)


def guidance_of(schema: dict[str, Any], layout: JsonCompileOptions) -> str:
    """The schema (checked by ``grammar_of``) as ONNX Runtime GenAI's ``json_schema``
    guidance: GenAI compiles it with its own llguidance, so the layout travels in the
    schema (llguidance's ``x-guidance``), the schema's own options first."""
    options = schema.get("x-guidance")
    own = options if isinstance(options, dict) else {}
    return json.dumps({**schema, "x-guidance": {**layout, **own}})


class Grammars:
    """Compiles schemas into llguidance matchers for one tokenizer. The vocabulary is
    taken in on first use (seconds), under a lock, as requests may come from threads."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = sorted(eos_ids)
        self._info: Any = None
        self._lock = threading.Lock()

    def check(self, schema: dict[str, Any]) -> str:
        return grammar_of(schema, COMPACT)

    def matcher(self, grammar: str) -> Any:
        import llguidance
        import llguidance.hf

        with self._lock:
            if self._info is None:
                self._info = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self.vocab_size, eos_token=self._eos or None
                )
        return llguidance.LLMatcher(self._info, grammar)


class RowGrammar:
    """One generating row's matcher, with its mask buffer."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        import llguidance.torch

        self.matcher = matcher
        self._mask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    def allowed(self, logits: Any) -> Any:
        """``logits`` with every token the grammar does not allow next at -inf."""
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self.matcher, self._mask, 0)
        masked = logits.float().clone().unsqueeze(0)
        llguidance.torch.apply_token_bitmask_inplace(masked, self._mask)
        return masked[0]

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")
