"""The error tree, and the one table that maps each error to what a client sees.

- ``RequestError``: the client's fault (4xx); never retried.
- ``RetryableError``: the worker or backend was unreachable before any output; the
  task goes back to the queue while attempts remain.
- ``FatalError``: attempts spent, deadline passed, instance died mid-stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SllmError(Exception):
    """Base of every error sllm reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    # Response headers the error carries (WWW-Authenticate, Retry-After).
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class RequestError(SllmError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class NotFound(RequestError):
    """Something other than a model is not there (a stored response)."""

    status = 404
    code = "not_found"


class Conflict(RequestError):
    status = 409
    code = "conflict"


class AuthenticationError(RequestError):
    """No key, or a key that is not configured (OpenAI's 401). The message never
    repeats the key presented."""

    status = 401
    code = "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}


class RetryableError(SllmError):
    status = 503
    type = "server_error"
    code = "backend_unavailable"


class FatalError(SllmError):
    status = 502
    type = "server_error"
    code = "request_failed"


class DeadlineExceeded(FatalError):
    status = 504
    code = "deadline_exceeded"


class TooManyRequests(SllmError):
    """Over a limit (a full queue, a rate limit); ``retry_after`` seconds, rounded up,
    go out as the ``Retry-After`` header."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message, param=param, code=code)
        self.retry_after = max(1, retry_after)


class ServiceUnavailable(SllmError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str


# Error codes as they travel inside result messages (from workers and Lua scripts), mapped
# back to what the client sees. Codes not listed here are server errors.
CODES: dict[str, ErrorKind] = {
    "invalid_request": ErrorKind(400, "invalid_request_error"),
    "invalid_api_key": ErrorKind(401, "invalid_request_error"),
    "model_not_found": ErrorKind(404, "invalid_request_error"),
    "not_found": ErrorKind(404, "invalid_request_error"),
    "model_deleted": ErrorKind(410, "invalid_request_error"),
    "attempts_exhausted": ErrorKind(502, "server_error"),
    "backend_error": ErrorKind(502, "server_error"),
    "deadline_exceeded": ErrorKind(504, "server_error"),
    "cancelled": ErrorKind(499, "invalid_request_error"),
    "stream_interrupted": ErrorKind(502, "server_error"),
    "model_unschedulable": ErrorKind(503, "server_error"),
}


def error_from_body(body: dict[str, Any], default_status: int = 502) -> SllmError:
    """Rebuild an error from an OpenAI-shaped body carried in a result message."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    code = str(err.get("code") or "backend_error")
    kind = CODES.get(code, ErrorKind(default_status, str(err.get("type") or "server_error")))
    exc = SllmError(str(err.get("message") or "request failed"), param=err.get("param"), code=code)
    exc.status = kind.status
    exc.type = kind.type
    return exc


def error_body(message: str, code: str, *, type_: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body for a code of the table."""
    kind = CODES.get(code, ErrorKind(500, "server_error"))
    return {"error": {"message": message, "type": type_ or kind.type, "param": None, "code": code}}
