"""A TCP proxy for fault tests: it adds latency to a link, or cuts its connections
every few seconds (this kernel has no netem). Run as a script on a test host:

    python proxy.py LISTEN_HOST:PORT TARGET_HOST:PORT CONTROL_PORT

and told what to do by a line on its control port: ``latency SECONDS``, ``drop
SECONDS`` (cut every connection that often; 0: never), ``clear``. Stdlib only.
"""

from __future__ import annotations

import asyncio
import sys
import time

state = {"latency": 0.0, "drop": 0.0}
connections: set[asyncio.StreamWriter] = set()


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction, each piece held ``latency`` seconds (order kept)."""
    pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1024)

    async def deliver() -> None:
        while True:
            due, data = await pending.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            await pending.put((time.monotonic() + state["latency"], data))
        await pending.put((0.0, b""))
        await sender
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        sender.cancel()
        writer.close()


async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    host, port = sys.argv[2].rsplit(":", 1)
    try:
        server_r, server_w = await asyncio.open_connection(host, int(port))
    except OSError:
        client_w.close()
        return
    connections.update({client_w, server_w})
    try:
        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
    finally:
        connections.difference_update({client_w, server_w})


async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    words = (await reader.readline()).decode().split()
    if words and words[0] == "clear":
        state.update(latency=0.0, drop=0.0)
    elif len(words) == 2 and words[0] in state:
        state[words[0]] = float(words[1])
    writer.write(f"{state}\n".encode())
    await writer.drain()
    writer.close()


async def dropper() -> None:
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.1)
        if state["drop"] and time.monotonic() - last >= state["drop"]:
            last = time.monotonic()
            for writer in list(connections):
                writer.transport.abort()


async def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    await asyncio.start_server(handle, host, int(port))
    await asyncio.start_server(control, host, int(sys.argv[3]))
    await dropper()


if __name__ == "__main__":
    asyncio.run(main())
