"""The OpenAI wire format: request schemas (validated by pydantic), error bodies, response bodies.

Parameter names and limits are OpenAI's (temperature 0-2, top_p in (0, 1], n, stop up to 4 strings,
seed, max_tokens, stream, stream_options.include_usage). Extensions, as in vLLM: top_k, min_p and
ignore_eos (generate max_tokens tokens whatever the model says: for benchmarks). Parameters we do
not implement are refused when set to anything but their neutral value, never silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Parameters with no effect here when absent or at these values; anything else is an error.
UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
    "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "tools": (None, []), "functions": (None, []), "response_format": (None, {"type": "text"}),
}


class APIError(Exception):
    """An error the client gets as OpenAI's `{"error": {...}}` body with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationParams(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] = Field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions = Field(default_factory=StreamOptions)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    ignore_eos: bool = False

    @model_validator(mode="before")
    @classmethod
    def refuse_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, neutral in UNSUPPORTED.items():
            if data.get(name) not in neutral:
                raise ValueError(f"'{name}' is not supported by this server; leave it out")
        return {key: value for key, value in data.items() if value is not None}  # null = the default

    @field_validator("stop")
    @classmethod
    def at_most_four(cls, stop: str | list[str]) -> list[str]:
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stop)}")
        return [s for s in stop if s]


class CompletionRequest(GenerationParams):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def not_an_empty_list(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_chatml(self) -> dict[str, str]:
        """The {role, content} dict `render_chat` takes (developer is the newer name for system)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens


def error_from_validation(errors: list[dict[str, Any]]) -> APIError:
    """pydantic/FastAPI validation errors -> one 400 naming the first bad field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {reason}".rstrip(": "))
    # loc is ("body", field, index, ...) plus, inside unions, the tried type ("str", "list[int]").
    param = ".".join(str(part) for part in first.get("loc", ())[1:] if not is_type_tag(part))
    message = first["msg"].removeprefix("Value error, ")
    if param:
        return APIError(400, f"{param}: {message}", param=param)
    if first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        message = "the request body must be a JSON object (and the Content-Type application/json)"
    return APIError(400, message)


def is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool")
                                      or part.startswith(("list[", "function-")))


# ---- response bodies ------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


def chat_delta(index: int, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def response_body(kind: str, response_id: str, model: str, choices: list[dict[str, Any]],
                  usage_body: dict[str, int] | None) -> dict[str, Any]:
    """A completion / chat.completion / chat.completion.chunk object (usage None is left out)."""
    body = {"id": response_id, "object": kind, "created": int(time.time()), "model": model,
            "choices": choices}
    if usage_body is not None:
        body["usage"] = usage_body
    return body


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "minillama"}
