"""A recorder of every request a fault test sends: status, error code, serving instance.

Fault tests check the whole record after each fault ("every request to the surviving
head succeeded", "no stream mixed two instances"), which catches far more than one
assertion on one request. Requests go through httpx rather than the openai SDK so a test
sees the exact HTTP status, the error event that ends a stream, and how long each took.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Outcome:
    label: str
    request_id: str
    started: float  # time.monotonic()
    ended: float
    status: int  # the HTTP status; 0 when no answer came (refused, cut off, timed out)
    code: str | None = None  # the OpenAI error code, from the body or a stream's error event
    instances: tuple[str, ...] = ()  # system_fingerprint of every chunk / the final body
    text: str = ""
    error: str = ""  # what went wrong, in words (empty on success)
    chunks: int = 0
    tokens: int = 0  # stream chunks that carried text

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def instance(self) -> str | None:
        return self.instances[-1] if self.instances else None

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def __str__(self) -> str:
        what = "ok" if self.ok else f"{self.status} {self.code} {self.error[:160]!r}"
        return (
            f"{self.label}[{self.request_id[:8]}] {what} on {self.instances} in {self.seconds:.2f}s"
        )


def _text_of(choice: dict[str, Any]) -> str:
    delta = choice.get("delta") or choice.get("message") or {}
    return str(choice.get("text") or delta.get("content") or "")


@dataclass
class Recorder:
    """Sends completions to a head and keeps every outcome; thread-safe."""

    outcomes: list[Outcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _add(self, outcome: Outcome) -> Outcome:
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def complete(
        self,
        head_url: str,
        prompt: str,
        *,
        label: str = "",
        model: str = "m",
        stream: bool = False,
        max_tokens: int = 8,
        timeout: float = 60.0,
        request_id: str | None = None,
        on_chunk: Callable[[dict[str, Any]], bool] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Outcome:
        """One /v1/completions request (``extra``: more fields of its body). ``on_chunk``
        sees each stream chunk and returns True to hang up right there (a client going
        away)."""
        request_id = request_id or uuid.uuid4().hex
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
        body.update(extra or {})
        started = time.monotonic()
        fields: dict[str, Any] = {"status": 0}
        try:
            with (
                httpx.Client(timeout=timeout, trust_env=False) as http,
                http.stream(
                    "POST",
                    f"{head_url}/v1/completions",
                    json=body,
                    headers={"x-request-id": request_id},
                ) as resp,
            ):
                fields["status"] = resp.status_code
                if resp.status_code != 200 or not stream:
                    fields.update(self._read_body(resp.read()))
                else:
                    fields.update(self._read_stream(resp.iter_lines(), on_chunk))
        except httpx.HTTPError as exc:
            fields["error"] = f"{type(exc).__name__}: {exc}"
        return self._add(Outcome(label, request_id, started, time.monotonic(), **fields))

    @staticmethod
    def _read_body(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            return {"error": f"not JSON: {raw[:200]!r}"}
        if "error" in body:
            err = body["error"]
            return {"code": err.get("code"), "error": str(err.get("message"))}
        fingerprint = body.get("system_fingerprint")
        return {
            "instances": (fingerprint,) if fingerprint else (),
            "text": "".join(_text_of(c) for c in body.get("choices", [])),
        }

    @staticmethod
    def _read_stream(
        lines: Iterable[str], on_chunk: Callable[[dict[str, Any]], bool] | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"instances": (), "text": "", "chunks": 0, "tokens": 0}
        for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return out
            event = json.loads(data)
            if "error" in event:
                out["code"] = event["error"].get("code")
                out["error"] = str(event["error"].get("message"))
                continue
            out["chunks"] += 1
            fingerprint = event.get("system_fingerprint")
            if fingerprint and fingerprint not in out["instances"]:
                out["instances"] = (*out["instances"], fingerprint)
            text = "".join(_text_of(c) for c in event.get("choices", []))
            out["text"] += text
            out["tokens"] += bool(text)
            if on_chunk is not None and on_chunk(event):
                out["error"] = "hung up by the test"
                return out
        out["error"] = out.get("error") or "the stream ended without [DONE]"
        return out

    # -- views ------------------------------------------------------------------------

    def by_label(self, prefix: str) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.label.startswith(prefix)]

    def failures(self, prefix: str = "") -> list[Outcome]:
        return [o for o in self.by_label(prefix) if not o.ok]

    def report(self, prefix: str = "") -> str:
        """The failures first, then every outcome: for assertion messages."""
        failed = self.failures(prefix)
        lines = [f"{len(failed)} of {len(self.by_label(prefix))} failed:"]
        lines += [str(o) for o in failed] + ["all:"] + [str(o) for o in self.by_label(prefix)]
        return "\n".join(lines)


class Load:
    """Keeps ``concurrency`` requests in flight against a head until stopped."""

    def __init__(
        self,
        recorder: Recorder,
        head_url: str,
        *,
        label: str,
        concurrency: int,
        **request: Any,
    ) -> None:
        self.recorder = recorder
        self.head_url = head_url
        self.label = label
        self.request = request
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=label)
        self._futures: list[Future[None]] = [
            self._pool.submit(self._loop, i) for i in range(concurrency)
        ]

    def _loop(self, lane: int) -> None:
        n = 0
        while not self._stop.is_set():
            self.recorder.complete(
                self.head_url, f"lane {lane} request {n}", label=self.label, **self.request
            )
            n += 1

    def stop_sending(self) -> None:
        """Send no new request; those in flight go on."""
        self._stop.set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop sending and wait (bounded) for the requests in flight."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for future in self._futures:
            future.result(timeout=max(0.1, deadline - time.monotonic()))
        self._pool.shutdown(wait=False)
