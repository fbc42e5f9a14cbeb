"""The leader's health probe against real sockets: an answer on a kept connection, a
worker that closed it meanwhile, nothing listening, a worker that never answers."""

from __future__ import annotations

import asyncio
import socket

import aiohttp.web

from sllm.client.launcher import free_port
from sllm.head.health_probe import HealthProbes


async def test_probes_reuse_a_connection_and_tell_refused_from_silent() -> None:
    status = 200

    async def health(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"status": "ok"}, status=status)

    app = aiohttp.web.Application()
    app.router.add_get("/health", health)
    runner = aiohttp.web.AppRunner(app, access_log=None, keepalive_timeout=0.3)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    probes = HealthProbes()
    try:
        assert await probes.probe(url, 1.0) == ("ok", "")
        reader_writer = probes._open[url]
        assert await probes.probe(url, 1.0) == ("ok", "")
        assert probes._open[url] is reader_writer  # the same connection
        # The worker closed the idle connection (its keep-alive): a new one, still ok.
        await asyncio.sleep(0.6)
        assert await probes.probe(url, 1.0) == ("ok", "")
        assert probes._open[url] is not reader_writer
        status = 500
        assert await probes.probe(url, 1.0) == ("error", "answered 500")
        # Nothing listens.
        dead = f"http://127.0.0.1:{free_port()}"
        result, detail = await probes.probe(dead, 1.0)
        assert result == "refused" and detail
        # Accepted, never answered.
        silent = socket.create_server(("127.0.0.1", 0))
        try:
            quiet = f"http://127.0.0.1:{silent.getsockname()[1]}"
            assert (await probes.probe(quiet, 0.2))[0] == "timeout"
        finally:
            silent.close()
        probes.keep({url})
        assert set(probes._open) == {url}
    finally:
        probes.close()
        await runner.cleanup()
