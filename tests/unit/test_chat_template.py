"""Chat templates rendered without transformers (the onnx backend), as transformers
renders them."""

from __future__ import annotations

from typing import Any

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sllm.backends.chat_template import ChatTemplate
from sllm.edge.errors import RequestError

TURNS: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": 'héllo "q"'},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "again"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONFIG = {"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>"}
TEMPLATES = {
    # Whitespace control (trim_blocks, lstrip_blocks), special tokens, loop controls.
    "layout": (
        "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}"
        "{% endif %}\n  <|{{ m.role }}|>{{ m.content }}{{ eos_token }}\n{% endfor %}\n"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    ),
    # tojson with its keyword arguments, as tool-calling templates use it.
    "tools": (
        "{% if tools %}{% for t in tools %}{{ t | tojson(indent=2) }}"
        "{{ t.function | tojson(separators=(',', ':'), sort_keys=True) }}{% endfor %}{% endif %}"
        "{% for m in messages %}{{ m.content | tojson }}{% endfor %}"
    ),
    # The training mark some templates put around the assistant's part.
    "generation": (
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
        "[{{ m.content }}]{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
    ),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_template_renders_as_transformers_renders_it(name: str) -> None:
    source = TEMPLATES[name]
    [expected] = render_jinja_template(
        [TURNS],
        tools=TOOLS,
        chat_template=source,
        add_generation_prompt=True,
        bos_token="<s>",
        eos_token="</s>",
    )[0]
    assert ChatTemplate(source, CONFIG).render(TURNS, TOOLS) == expected


def test_a_templates_own_refusal_is_a_400() -> None:
    source = (
        "{% if messages[0].role != 'user' %}"
        "{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok"
    )
    template = ChatTemplate(source, {})
    assert template.render(TURNS[1:], None) == "ok"
    with pytest.raises(RequestError, match="roles must start with user") as caught:
        template.render(TURNS, None)
    assert caught.value.param == "messages"


def test_the_sandbox_refuses_what_a_template_must_not_do() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", {})
    with pytest.raises(RequestError, match="chat template refused"):
        template.render(TURNS, None)
