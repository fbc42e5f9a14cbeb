"""A small synchronous client of the head's management API, for the CLI and ``sllm up``."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from sllm.config import DeployConfig


class HeadError(Exception):
    """The head refused a call, or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HeadClient:
    def __init__(self, url: str, timeout: float = 30.0, *, admin_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        # The admin key guards the management API; the head takes it on /v1/models too.
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        # trust_env=False: an HTTP(S)_PROXY meant for the internet must not catch the head.
        self._http = httpx.Client(timeout=timeout, trust_env=False, headers=headers)

    def __enter__(self) -> HeadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.url}{path}"
        try:
            resp = self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise HeadError(f"cannot reach the head at {self.url}: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else resp.text[:500]
            raise HeadError(f"{message} (HTTP {resp.status_code} from {url})", resp.status_code)
        if data is None:
            raise HeadError(f"{url} answered something that is not JSON: {resp.text[:200]!r}")
        return data

    def deploy(self, config: DeployConfig, *, replace: bool = False) -> str:
        """Register ``config``; with ``replace``, update it when it exists already.
        Returns "deployed" or "updated"."""
        body = config.model_dump(mode="json")
        try:
            self.call("POST", "/register", body)
            return "deployed"
        except HeadError as exc:
            if not (replace and exc.status == 409):
                raise
        self.call("POST", "/update", body)
        return "updated"

    def update(self, config: DeployConfig) -> None:
        self.call("POST", "/update", config.model_dump(mode="json"))

    def delete(self, model: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/delete", {"model": model})
        return result

    def drain(self, node_id: str) -> str | None:
        """Ask worker ``node_id`` to drain; its state now ("draining" or "drained")."""
        result: dict[str, Any] = self.call("POST", f"/workers/{quote(node_id, safe='')}/drain")
        return result.get("drain")

    def migrate(self, instance_id: str) -> dict[str, Any]:
        """Ask that the streams instance ``instance_id`` runs move to the other instances
        of its model: ``moves`` (task -> instance) and ``staying`` (no room elsewhere)."""
        path = f"/instances/{quote(instance_id, safe='')}/migrate"
        result: dict[str, Any] = self.call("POST", path)
        return result

    def undrain(self, node_id: str) -> None:
        self.call("DELETE", f"/workers/{quote(node_id, safe='')}/drain")

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/status")
        return result

    def models(self) -> list[str]:
        data = self.call("GET", "/v1/models")
        return [m["id"] for m in data.get("data", [])]
