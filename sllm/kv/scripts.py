"""The Lua scripts of ``lua/``, registered with redis-py so a flushed script cache heals."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as redis
from redis.commands.core import AsyncScript


def lua_dir() -> Path:
    """``sllm/lua`` inside an installed wheel, ``lua/`` at the top of a checkout."""
    packaged = Path(__file__).resolve().parent.parent / "lua"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "lua"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"sllm's Lua scripts are missing: looked in {packaged} and {checkout}")


class Scripts:
    """Attribute access to every script by file name: ``scripts.enqueue(keys=..., args=...)``."""

    def __init__(self, client: redis.Redis) -> None:
        root = lua_dir()
        # Lua has no imports: the shared helpers of lib/ are put before each script.
        lib = "\n".join(path.read_text() for path in sorted((root / "lib").glob("*.lua")))
        self._scripts: dict[str, AsyncScript] = {
            path.stem: client.register_script(f"{lib}\n{path.read_text()}")
            for path in sorted(root.glob("*.lua"))
        }

    def __getattr__(self, name: str) -> AsyncScript:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(f"no Lua script named {name!r}") from None
