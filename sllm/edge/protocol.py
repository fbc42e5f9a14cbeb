"""OpenAI wire models, shared by the gateway and every backend server.

Requests keep unknown fields (``extra="allow"``) so backend-specific sampling options
(vLLM's ``top_k``, guided decoding, ...) travel through the cluster untouched; the fields
declared here are the ones sllm itself validates or reads.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sllm.edge import names
from sllm.edge.errors import RequestError
from sllm.edge.unicode_text import first_invalid

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


# ``BASE:ADAPTER`` names a LoRA adapter of a deployed model (model names have no ':').
ADAPTER_SEPARATOR = ":"
# A non-streamed answer its backend cut short to move it (live migration): its finish
# reason, and the field naming where it goes on (``backends/cuts.py``).
CUT_FINISH = "sllm_cut"
MOVED_FIELD = "sllm_moved"


def adapter_model_name(model: str, adapter: str) -> str:
    return f"{model}{ADAPTER_SEPARATOR}{adapter}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1,
        max_length=names.TARGET_MAX,
        # Documented for clients and fuzzers; the validator below says what is wrong.
        json_schema_extra={"pattern": names.TARGET_PATTERN},
    )
    user: str | None = None
    # ServerlessLLM's way to pick a LoRA adapter; ``model="BASE:ADAPTER"`` is the other.
    lora_adapter_name: str | None = Field(
        default=None,
        max_length=names.ADAPTER_MAX,
        json_schema_extra={"pattern": f"^$|{names.ADAPTER_PATTERN}"},
    )

    @model_validator(mode="before")
    @classmethod
    def _encodable(cls, data: Any) -> Any:
        where = first_invalid(data)
        if where is not None:
            # A RequestError, not a ValueError: pydantic lets it through as it is, so
            # the 400 names the field itself (a ValueError here would name the body).
            raise RequestError(
                f"{where}: the text is not valid Unicode (a lone surrogate such as "
                "\\ud800); send UTF-8 text or a valid surrogate pair",
                param=where,
            )
        return data

    @field_validator("model")
    @classmethod
    def _plain_model(cls, value: str) -> str:
        # Refused here, before the name reaches a Redis key, a header or a log line.
        base, sep, adapter = value.partition(ADAPTER_SEPARATOR)
        if not names.is_model_name(base):
            raise ValueError(names.MODEL_RULE)
        if sep and not names.is_adapter_name(adapter):
            raise ValueError(f"'{value}' is not MODEL:ADAPTER; {names.ADAPTER_RULE}")
        return value

    @field_validator("lora_adapter_name")
    @classmethod
    def _plain_adapter(cls, value: str | None) -> str | None:
        if value and not names.is_adapter_name(value):
            raise ValueError(names.ADAPTER_RULE)
        return value

    def target(self) -> tuple[str, str | None]:
        """(deployed model, LoRA adapter or None) this request asks for."""
        base, sep, adapter = self.model.partition(ADAPTER_SEPARATOR)
        named = adapter if sep else None
        if sep and not (base and adapter):
            raise RequestError(f"'{self.model}' is not BASE:ADAPTER", param="model")
        field = self.lora_adapter_name or None
        if named and field and named != field:
            raise RequestError(
                f"lora_adapter_name '{field}' contradicts the model name '{self.model}'",
                param="lora_adapter_name",
            )
        return base, named or field


# OpenAI request fields that shape the answer and that sllm's own backends (transformers,
# dummy) do not implement, with the values that ask for nothing. A request asking for one
# is refused: answered as if the field were absent, it would look served (JSON mode, tools)
# and not be. vLLM's own server implements them and never runs this check.
_NOTHING: tuple[Any, ...] = (None, False, "", [], {})
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "functions": _NOTHING,
    "function_call": (*_NOTHING, "none", "auto"),
    "logit_bias": _NOTHING,
    "best_of": (*_NOTHING, 1),
    "suffix": _NOTHING,
    "audio": _NOTHING,
    "modalities": (*_NOTHING, ["text"]),
    "prediction": _NOTHING,
    # vLLM's own extensions that sllm's backends do not do (response_format, tools,
    # min_tokens, top_k... they do).
    "guided_json": _NOTHING,
    "guided_regex": _NOTHING,
    "guided_choice": _NOTHING,
    "guided_grammar": _NOTHING,
    "structured_outputs": _NOTHING,
    "stop_token_ids": _NOTHING,
    "bad_words": _NOTHING,
    "allowed_token_ids": _NOTHING,
    "prompt_logprobs": _NOTHING,
    "truncate_prompt_tokens": _NOTHING,
}


def not_implemented(extra: dict[str, Any] | None) -> list[str]:
    """The fields among a request's unmodelled ones (``model_extra``) that ask for
    something sllm's own backends do not do."""
    extra = extra or {}
    return [
        name
        for name, nothing in NOT_IMPLEMENTED.items()
        if name in extra and extra[name] not in nothing
    ]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _Sampling(_Request):
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # int64, as OpenAI and torch's generators take it.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    # vLLM's sampling extensions, with its bounds: top_k -1 or 0 keeps every token.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    # Tokens generated before end of sequence may end a choice (stop strings still do).
    min_tokens: int | None = Field(default=None, ge=0)
    # Generate through end of sequence, to the token limit (load tools set it).
    ignore_eos: bool = False
    # Text this request's one choice has already produced: the backend goes on after it
    # as if it had generated it itself (the gateway's stream resume sets it).
    sllm_continue_from: str | None = None
    # A migration's warm-up: the prompt (and the text above) prefilled, one token made,
    # whatever the token limit; the instance keeps the prefix for the take-over.
    sllm_prefill: bool = False

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _continuable(self) -> _Sampling:
        if self.sllm_continue_from is not None and self.n != 1:
            raise ValueError("sllm_continue_from needs n = 1")
        return self

    @model_validator(mode="after")
    def _min_within_max(self) -> _Sampling:
        limit = self.token_limit()
        if self.min_tokens and limit is not None and self.min_tokens > limit:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds the token limit ({limit})")
        return self

    def token_limit(self) -> int | None:
        return self.max_tokens

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are not read."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


# The most alternatives a request may ask for at each place (vLLM's --max-logprobs).
MAX_LOGPROBS = 20


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def logprob_count(self) -> int | None:
        """Alternatives per place when log-probabilities are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# A prompt or an embedding input: text, or token ids of the model's own vocabulary (as
# vLLM takes them; evaluation harnesses and LangChain's embeddings send ids).
TokenIds = list[Annotated[int, Field(ge=0)]]
Prompt = str | TokenIds


def _prompt_list(value: str | list[str] | TokenIds | list[TokenIds]) -> list[Prompt]:
    """One prompt, or a batch of them, as a list of prompts."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]  # type: ignore[list-item]  # one text or one list of ids
    return list(value)  # type: ignore[arg-type]  # a batch of texts or of id lists


def _no_empty_prompt(value: Any) -> Any:
    if isinstance(value, list) and any(isinstance(v, list) and not v for v in value):
        raise ValueError("a list of token ids must not be empty")
    return value


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(min_length=1)
    echo: bool = False
    # The legacy API's: log-probabilities with this many alternatives at each place.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    def logprob_count(self) -> int | None:
        return self.logprobs

    _prompt_ids = field_validator("prompt")(_no_empty_prompt)

    @model_validator(mode="after")
    def _continuable_prompt(self) -> CompletionRequest:
        if self.sllm_continue_from is not None and (self.echo or not isinstance(self.prompt, str)):
            raise ValueError("sllm_continue_from needs one prompt string and no echo")
        return self

    def prompts(self) -> list[Prompt]:
        return _prompt_list(self.prompt)


class EmbeddingRequest(_Request):
    input: str | list[str] | TokenIds | list[TokenIds] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    # Bounded: a backend builds a vector this long for every input.
    dimensions: int | None = Field(default=None, ge=1, le=65536)

    _input_ids = field_validator("input")(_no_empty_prompt)

    def inputs(self) -> list[Prompt]:
        return _prompt_list(self.input)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    """An entry of /v1/models, with the fields vLLM's server adds that clients read."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "sllm"
    # What the model was deployed from, the base model of an adapter, and the tokens of
    # prompt plus output a request may hold (None until an instance has said).
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- responses: what the backends send and the gateway relays. Declared for clients and
# schema checkers (tests/faults/test_schemas.py); the backends build them as dicts.
# Unknown fields are allowed, as OpenAI adds fields over time.

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int = Field(ge=0)
    message: AssistantMessage
    finish_reason: FinishReason | None


class _Generated(BaseModel):
    id: str
    created: int
    model: str
    # The instance that served the request.
    system_fingerprint: str | None = None
    usage: Usage | None = None


class ChatCompletion(_Generated):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = Field(ge=0)
    delta: ChatDelta
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Generated):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]


class CompletionChoice(BaseModel):
    index: int = Field(ge=0)
    text: str
    finish_reason: FinishReason | None


class Completion(_Generated):
    """A completion, and (as in OpenAI's API) each chunk of a streamed one."""

    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int = Field(ge=0)
    # A list of floats, or base64 of little-endian float32 with encoding_format "base64".
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
