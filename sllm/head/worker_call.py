"""The dispatcher's call to a worker (``/invoke``): one attempt of a task, and what its
answer, or the way the call failed, says happened to it.

The worker's answer is NDJSON: result messages of a stream whose client waits on this
head (``direct``), ``{"alive": true}`` lines while the attempt runs, then the outcome
line (with the terminal message when it is handed back rather than published).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from sllm.edge import fast_json
from sllm.edge.hop_client import (
    HopClient,
    HopConnectError,
    HopConnectTimeout,
    HopDisconnected,
    HopError,
    HopSilent,
)
from sllm.edge.messages import DIRECT_HEADER
from sllm.edge.serving import refuses_connections
from sllm.kv.records import InstanceRecord

# The worker writes a line at least this often while a task runs; silence for
# INVOKE_SILENCE seconds means the worker is gone or frozen.
INVOKE_SILENCE = 5.0
# The longest /invoke line read: an answer goes back in one, and one Redis could not
# store (its strings stop at 512 MiB) could not have been delivered any other way.
MAX_LINE = 512 << 20
CONNECT_TIMEOUT = 3.0


async def invoke(
    hop: HopClient,
    instance: InstanceRecord,
    payload: bytes,
    direct: bool,
    answers: Callable[[str | bytes], None] | None,
) -> tuple[str, str]:
    """Run one attempt on ``instance``: its outcome ("done", "failed", "retry",
    "crashed", or how the call failed: "unsent", "unreachable", "silent", "lost") and
    what went wrong. Result messages that come back in the answer go to ``answers``;
    ``direct``: ask for a stream's chunks there."""
    headers = {"content-type": "application/json"}
    if direct:
        headers[DIRECT_HEADER] = "1"
    host, port, tls = _address(instance.url)
    try:
        resp = await hop.post(
            host,
            port,
            "/invoke",
            payload,
            headers,
            total=None,
            connect_timeout=CONNECT_TIMEOUT,
            silence=INVOKE_SILENCE,
            tls=tls,
        )
        async with resp:
            if resp.status != 200:
                text = (await resp.text())[:500]
                return "lost", f"worker answered {resp.status}: {text}"
            last: dict[str, Any] = {}
            # An answer (embeddings of many inputs) can be one line of megabytes.
            while line := await resp.readline(MAX_LINE):
                if line.startswith(b'{"task"') and answers is not None:
                    answers(line)  # a result message of the stream
                elif line.strip():
                    last = fast_json.loads(line)
            outcome = str(last.get("outcome", ""))
            answer = last.get("answer")
            if outcome in ("done", "failed") and answer and answers is not None:
                answers(str(answer))
            if outcome in ("done", "failed"):
                return outcome, ""
            if outcome in ("retry", "crashed"):
                return outcome, str(last.get("error", "the backend was unavailable"))
            return "lost", "the worker closed the call without an outcome"
    except HopConnectTimeout as exc:
        return "unsent", f"worker {instance.node_id} did not answer a connection: {exc}"
    except HopConnectError as exc:
        return "unreachable", f"worker {instance.node_id} unreachable: {exc}"
    except HopDisconnected as exc:
        if await refuses_connections(instance.url):
            # Its process is gone (a kept-alive connection was reset): what it ran
            # died with it, so the retry spends no attempt, as for a refused call.
            return "unreachable", f"worker {instance.node_id} died under the call: {exc}"
        return "lost", f"lost the call to worker {instance.node_id}: {exc}"
    except HopSilent as exc:
        return "silent", f"worker {instance.node_id} went silent: {exc}"
    except (HopError, ValueError) as exc:  # a garbled answer, or a line past MAX_LINE
        return "lost", f"lost the call to worker {instance.node_id}: {exc!r}"


@lru_cache(maxsize=4096)
def _address(url: str) -> tuple[str, int, bool]:
    """A worker's URL as host, port and whether it takes TLS."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls
