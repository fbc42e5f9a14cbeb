"""Who may call what: FastAPI dependencies for API keys, the admin key and the cluster token.

- ``/v1/*``: an API key (or the admin key) once any API key is configured; then the
  caller's requests and tokens per minute are charged (per key, or per client address
  when no keys are configured).
- the management API: the admin key, once one is configured.
- head <-> worker calls: the cluster token, once one is configured, checked on both sides.

Each check is a no-op while its secret is unset, so a cluster without keys behaves as
before. Messages name the setting that is missing, never a key.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import SecretStr

from sllm.config import HeadSettings, WorkerSettings
from sllm.edge.auth import (
    KeyRing,
    Limits,
    bearer_token,
    fingerprint,
    load_keys,
    matches,
    store_token,
)
from sllm.edge.errors import AuthenticationError, TooManyRequests
from sllm.head.token_estimate import estimate_tokens

if TYPE_CHECKING:
    from sllm.kv.rate_limits import RateLimits

log = logging.getLogger(__name__)

LIMIT_ABBREVIATION = {"requests": "RPM", "tokens": "TPM"}


def _secret(value: SecretStr | None) -> str | None:
    # An empty variable (SLLM_ADMIN_KEY=) means unset, never "the empty key".
    return (value.get_secret_value().strip() or None) if value is not None else None


@dataclass(frozen=True, repr=False)
class Caller:
    """Whom a /v1 request is charged to: a key's fingerprint or a client address."""

    client_id: str
    limits: Limits


@dataclass(frozen=True, repr=False)
class Guard:
    api_keys: KeyRing = field(default_factory=KeyRing)
    admin_key: str | None = None
    cluster_token: str | None = None
    default_limits: Limits = field(default_factory=Limits)

    def __repr__(self) -> str:
        return f"Guard({self.api_keys!r}, admin={self.admin_key is not None})"

    @classmethod
    def for_head(cls, settings: HeadSettings) -> Guard:
        """Raises KeyConfigError when the configured keys cannot be read."""
        keys = load_keys(_secret(settings.api_keys), settings.api_keys_file)
        return cls(
            api_keys=KeyRing(keys),
            admin_key=_secret(settings.admin_key),
            cluster_token=_secret(settings.cluster_token),
            default_limits=Limits(settings.rate_limit_rpm, settings.rate_limit_tpm),
        )

    @classmethod
    def for_worker(cls, settings: WorkerSettings) -> Guard:
        return cls(cluster_token=_secret(settings.cluster_token))

    def api_caller(self, request: Request) -> Caller:
        """The caller of a /v1 request, or AuthenticationError."""
        if not self.api_keys:
            host = request.client.host if request.client else "unknown"
            return Caller(f"addr:{host}", self.default_limits)
        presented = bearer_token(request.headers.get("authorization"))
        if presented is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        key = self.api_keys.find(presented)
        if key is not None:
            return Caller(f"key:{key.fingerprint}", key.limits.over(self.default_limits))
        # The admin key may read and call models too (the CLI's `sllm models`).
        if self.admin_key is not None and matches(presented, self.admin_key):
            return Caller(f"key:{fingerprint(self.admin_key)}", self.default_limits)
        raise AuthenticationError("Incorrect API key provided.")


def _guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


def _check(request: Request, secret: str | None, what: str) -> None:
    if secret is None:
        return
    presented = bearer_token(request.headers.get("authorization"))
    if presented is None or not matches(presented, secret):
        raise AuthenticationError(f"This endpoint needs {what} as 'Authorization: Bearer ...'.")


async def require_cluster_token(request: Request) -> None:
    """Head <-> worker endpoints."""
    _check(request, _guard(request).cluster_token, "the cluster token (SLLM_CLUSTER_TOKEN)")


async def require_store_reader(request: Request) -> None:
    """A worker's store: the cluster token, or the store token derived from it."""
    token = _guard(request).cluster_token
    if token is None:
        return
    presented = bearer_token(request.headers.get("authorization"))
    if presented is None or not (
        matches(presented, token) or matches(presented, store_token(token))
    ):
        raise AuthenticationError(
            "This endpoint needs the cluster token (SLLM_CLUSTER_TOKEN) or the store "
            "token derived from it as 'Authorization: Bearer ...'."
        )


async def require_admin_key(request: Request) -> None:
    """The management API."""
    _check(request, _guard(request).admin_key, "the admin key (SLLM_ADMIN_KEY)")


async def require_api_key(request: Request) -> None:
    """The OpenAI API: authenticate, then charge the caller's rate limits."""
    caller = _guard(request).api_caller(request)
    limits = caller.limits
    if limits.unlimited:
        return
    rate_limits: RateLimits = request.app.state.rate_limits
    tokens = estimate_tokens(request.url.path, await _json(request)) if limits.tpm else 0
    decision = await rate_limits.charge(
        caller.client_id, limits.rpm or 0, limits.tpm or 0, tokens, time.time()
    )
    if decision.allowed:
        return
    retry_after = max(1, math.ceil(decision.wait_ms / 1000))
    limit = limits.rpm if decision.limit == "requests" else limits.tpm
    abbreviation = LIMIT_ABBREVIATION.get(decision.limit, decision.limit)
    log.info(
        "%s is over its %s limit; retry after %d s", caller.client_id, abbreviation, retry_after
    )
    raise TooManyRequests(
        f"Rate limit reached for {decision.limit} per minute ({abbreviation}): "
        f"limit {limit}. Please try again in {retry_after}s.",
        retry_after=retry_after,
    )


async def _json(request: Request) -> Any:
    """The request's JSON body (FastAPI has read it already; this reads its cache)."""
    if request.method != "POST":
        return None
    try:
        return await request.json()
    except ValueError:
        return None
