"""``/dashboard``: one page (plain HTML and JS, nothing fetched from elsewhere) that
polls ``/dashboard/data`` for the cluster's status and this head's recent traffic, and
``/metrics`` for Prometheus."""

from __future__ import annotations

import time
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from sllm.edge.guards import require_admin_key
from sllm.head.autoscaler import Autoscaler
from sllm.head.model_manager import ModelManager
from sllm.head.recent import Recent
from sllm.metrics import CONTENT_TYPE_LATEST, HeadMetrics, exposition

router = APIRouter()


@cache
def _page() -> str:
    return files("sllm.head").joinpath("dashboard.html").read_text()


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    # The page holds no data: what it shows comes from /dashboard/data, behind the key.
    return HTMLResponse(_page())


@router.get("/dashboard/data", dependencies=[Depends(require_admin_key)])
async def dashboard_data(request: Request) -> dict[str, Any]:
    models: ModelManager = request.app.state.models
    autoscaler: Autoscaler = request.app.state.autoscaler
    recent: Recent = request.app.state.recent
    status = await models.status(autoscaler.unschedulable)
    now = time.time()
    return {
        "head_id": request.app.state.head_id,
        "now": now,
        "status": status,
        "series": recent.series(now),
        # Deployed models only: the series' keys cannot grow past them.
        "models": recent.model_series(now, [m["model"] for m in status["models"]]),
        # The requests this head's gateway moved (or tried to), the latest last.
        "migrations": list(request.app.state.gateway.moves.recent),
    }


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    head_metrics: HeadMetrics = request.app.state.metrics
    return Response(exposition(head_metrics.registry), media_type=CONTENT_TYPE_LATEST)
