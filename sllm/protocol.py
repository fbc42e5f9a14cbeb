"""OpenAI wire models, shared by the gateway and every backend server.

Requests keep unknown fields (``extra="allow"``) so backend-specific sampling options
(vLLM's ``top_k``, guided decoding, ...) travel through the cluster untouched; the fields
declared here are the ones sllm itself validates or reads.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sllm.errors import RequestError

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


# ``BASE:ADAPTER`` names a LoRA adapter of a deployed model (model names have no ':').
ADAPTER_SEPARATOR = ":"


def adapter_model_name(model: str, adapter: str) -> str:
    return f"{model}{ADAPTER_SEPARATOR}{adapter}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    user: str | None = None
    # ServerlessLLM's way to pick a LoRA adapter; ``model="BASE:ADAPTER"`` is the other.
    lora_adapter_name: str | None = Field(default=None, max_length=128)

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
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

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


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    echo: bool = False

    def token_limit(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class EmbeddingRequest(_Request):
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "sllm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# The endpoints a task can target, by the path every backend serves them on.
ENDPOINTS: dict[str, type[_Request]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
