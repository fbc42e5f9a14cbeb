"""A model's chat template rendered as transformers renders it (a sandboxed Jinja
environment with the same filters and globals), for backends that serve without
transformers: the onnx backend. One tokenizer parse fewer than GenAI's own
``apply_chat_template`` (its tokenizer: 0.1 s of the demo model's start here).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from sllm.edge.errors import RequestError

# The special tokens a template may name, as transformers passes them.
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``, which templates use to mark the
    assistant's part for training masks: rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class ChatTemplate:
    """One model's template, compiled once."""

    def __init__(self, source: str, tokenizer_config: dict[str, Any]) -> None:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_Generation, jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        self._template = env.from_string(source)
        self._special = {
            name: _token_text(tokenizer_config[name])
            for name in _SPECIAL
            if tokenizer_config.get(name) is not None
        }

    def render(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        """The prompt for ``turns``, the assistant's turn opened; a template's own
        refusal (``raise_exception``: roles that do not alternate, say) is a 400."""
        try:
            return self._template.render(
                messages=turns, tools=tools, add_generation_prompt=True, **self._special
            )
        except jinja2.TemplateError as exc:
            raise RequestError(
                f"the model's chat template refused: {exc}", param="messages"
            ) from None


def _token_text(token: Any) -> str:
    """A special token as the tokenizer's config has it: text, or an added token's
    fields."""
    return str(token["content"]) if isinstance(token, dict) else str(token)
