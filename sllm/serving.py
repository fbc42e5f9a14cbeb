"""How every sllm process logs and serves its FastAPI app: one format, one shutdown."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def serve(app: FastAPI, host: str, port: int, log_level: str, *, access_log: bool = True) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get 10 s to finish, then the
    app's lifespan stops what it owns."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
