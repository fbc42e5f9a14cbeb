"""The worker's store, served to its peers (``sllm.store.peer_fetch`` is the client).

``GET /store/copy?source=S&auto_class=C``: the name and index of a sound stored copy
of deployed source ``S`` loaded as ``C`` (404 when there is none).
``GET /store/file/{name}/{file}``: one file of that copy, HTTP ranges honoured.

Both need the cluster token or the store token derived from it (which backends get,
to fetch: it reads stores and nothing else). Only files an index lists are served,
from copies in the store's own directory, so nothing else on the worker's disk can be
named.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from sllm.edge.api_errors import error_response
from sllm.edge.guards import require_store_reader
from sllm.store.format import IndexFormatError
from sllm.store.integrity import check, read_index
from sllm.store.tiers import ModelCache

router = APIRouter(dependencies=[Depends(require_store_reader)])


class _StoredFile(FileResponse):
    # Starlette reads 64 KiB at a time, each read a hop to a thread: 4 MiB reads move
    # a model several times faster (benchmarks/peer_fetch.py).
    chunk_size = 4 << 20


def _cache(request: Request) -> ModelCache:
    cache: ModelCache = request.app.state.worker.cache.cache
    return cache


def sound_copy(cache: ModelCache, source: str, auto_class: str) -> tuple[str, str] | None:
    """The name and index text of a stored copy of ``source`` that passes the load's
    quick check (blocking: file reads)."""
    for entry in cache.entries():
        if source not in entry.sources:
            continue
        try:
            index = read_index(entry.path)
        except (OSError, IndexFormatError):
            continue
        if index.auto_class == auto_class and not check(entry.path, index, "quick"):
            return entry.path.name, index.to_json()
    return None


def listed_file(cache: ModelCache, name: str, file: str) -> Path | None:
    """``file`` of stored copy ``name``, when its index lists it (blocking)."""
    copy = cache.store_root / name
    if name.startswith(".") or "/" in name or copy.parent != cache.store_root:
        return None
    try:
        index = read_index(copy)
    except (OSError, ValueError):  # ValueError: a NUL in the name; or a bad index
        return None
    listed = {e.file for e in [*index.chunks, *index.files]}
    return copy / file if file in listed else None


@router.get("/store/copy", response_model=None)
async def stored_copy(
    request: Request,
    source: str = Query(min_length=1, max_length=1024),
    auto_class: str = Query(min_length=1, max_length=128),
) -> dict[str, Any] | JSONResponse:
    found = await asyncio.to_thread(sound_copy, _cache(request), source, auto_class)
    if found is None:
        message = f"no sound stored copy of {source!r} as {auto_class} here"
        return error_response(404, message, "not_stored", param="source")
    name, index = found
    return {"name": name, "index": index}


@router.get("/store/file/{name}/{file:path}", response_model=None)
async def stored_file(name: str, file: str, request: Request) -> Response:
    path = await asyncio.to_thread(listed_file, _cache(request), name, file)
    if path is None:
        return error_response(404, f"{name}/{file} is not a stored file here", "not_stored")
    return _StoredFile(path, media_type="application/octet-stream")
