"""``sllm status`` as tables: models, instances, workers. Pure over /status's JSON."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _gib(n: Any) -> str:
    return f"{float(n) / 2**30:.1f}" if isinstance(n, int | float) else "-"


def _table(title: str, columns: list[str], rows: list[list[str]], empty: str) -> Table:
    table = Table(title=title, title_justify="left", caption=None if rows else empty)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def status_tables(status: dict[str, Any], now: float) -> list[Table]:
    models = status.get("models", [])
    workers = status.get("workers", [])
    model_rows = []
    instance_rows = []
    for m in models:
        instances = m.get("instances", [])
        ready = sum(1 for i in instances if i.get("state") == "ready")
        scaling = (m.get("config") or {}).get("auto_scaling_config", {})
        note = m.get("unschedulable") or ""
        model_rows.append(
            [
                str(m.get("model")),
                str(m.get("backend")),
                str(m.get("state")),
                f"{ready}/{len(instances)}",
                f"{scaling.get('min_instances', '-')}..{scaling.get('max_instances', '-')}",
                str(m.get("queue_length", 0)),
                str(m.get("in_flight", 0)),
                note,
            ]
        )
        for i in instances:
            last = i.get("last_finished") or i.get("ready_at")
            instance_rows.append(
                [
                    str(i.get("instance_id")),
                    str(m.get("model")),
                    str(i.get("node_id")),
                    str(i.get("state")),
                    str(i.get("outstanding", 0)),
                    _age(now - last if last else None),
                    str(i.get("reason") or ""),
                ]
            )
    worker_rows = []
    for w in workers:
        res = w.get("resources") or {}
        gpus = res.get("gpus") or []
        worker_rows.append(
            [
                str(w.get("node_id")),
                str(w.get("url")),
                "yes" if w.get("healthy") else "no",
                _age(w.get("seconds_since_heartbeat")),
                str(len(w.get("instances") or [])),
                str(res.get("cpu_count", "-")),
                f"{_gib(res.get('memory_available'))}/{_gib(res.get('memory_total'))}",
                ", ".join(f"{g.get('name')} {_gib(g.get('memory_free'))} GiB free" for g in gpus)
                or "-",
                str(w.get("warm_processes", 0)),
                ", ".join(
                    f"{c.get('source')} ({c.get('tier')}, {_gib(c.get('bytes'))} GiB)"
                    for c in w.get("cache") or []
                )
                or "-",
            ]
        )
    cannot = [
        [str(w.get("node_id")), backend, str(why)]
        for w in workers
        for backend, why in sorted((w.get("unavailable") or {}).items())
    ]
    tables = [
        _table(
            "Models",
            ["MODEL", "BACKEND", "STATE", "READY", "MIN..MAX", "QUEUED", "IN FLIGHT", "NOTE"],
            model_rows,
            "no models deployed: sllm deploy CONFIG.json",
        ),
        _table(
            "Instances",
            ["INSTANCE", "MODEL", "NODE", "STATE", "OUTSTANDING", "LAST ACTIVE", "REASON"],
            instance_rows,
            "no instances",
        ),
        _table(
            "Workers",
            [
                "NODE",
                "URL",
                "HEALTHY",
                "HEARTBEAT",
                "INSTANCES",
                "CPUS",
                "MEM GiB",
                "GPUS",
                "WARM",
                "CACHED",
            ],
            worker_rows,
            "no workers: start one with sllm worker --head-url URL",
        ),
    ]
    if cannot:
        tables.append(_table("Backends workers cannot run", ["NODE", "BACKEND", "WHY"], cannot, ""))
    return tables
