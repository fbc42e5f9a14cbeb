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


def _used_of(total: Any, free: Any) -> str:
    """``used / total`` in GiB, as the dashboard shows memory."""
    if not isinstance(total, int | float) or not isinstance(free, int | float):
        return "-"
    return f"{_gib(total - free)} / {_gib(total)}"


def _gpu(gpu: dict[str, Any]) -> str:
    return f"{gpu.get('index', '?')}: {_used_of(gpu.get('memory_total'), gpu.get('memory_free'))}"


def _cpu(res: dict[str, Any]) -> str:
    percent = res.get("cpu_percent")
    cpus = res.get("cpu_count", "-")
    return f"{percent:.0f}% of {cpus}" if isinstance(percent, int | float) else f"- of {cpus}"


def _table(title: str, columns: list[str], rows: list[list[str]], empty: str) -> Table:
    table = Table(title=title, title_justify="left", caption=None if rows else empty)
    for column in columns:
        # Narrow terminals fold long cells (reasons, names) instead of cutting them.
        table.add_column(column, overflow="fold")
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
    cached_rows = []
    for w in workers:
        res = w.get("resources") or {}
        gpus = res.get("gpus") or []
        owned = res.get("sllm_memory") or {}
        worker_rows.append(
            [
                str(w.get("node_id")),
                ("suspect " if w.get("suspect") else "ok " if w.get("healthy") else "silent ")
                + (f"{w['drain']} " if w.get("drain") else "")
                + _age(w.get("seconds_since_heartbeat")),
                str(len(w.get("instances") or [])),
                _cpu(res),
                _used_of(res.get("memory_total"), res.get("memory_available")),
                _gib(owned.get("host"))
                + (f" + GPU {_gib(owned['gpu'])}" if owned.get("gpu") else ""),
                ", ".join(_gpu(g) for g in gpus) or "-",
                str(w.get("warm_processes", 0)),
            ]
        )
        cached_rows += [
            [str(w.get("node_id")), str(c.get("source")), str(c.get("tier")), _gib(c.get("bytes"))]
            for c in w.get("cache") or []
        ]
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
            "Workers (memory in GiB, used / total; SLLM: what sllm's processes hold)",
            ["NODE", "HEARTBEAT", "INST", "CPU", "MEMORY", "SLLM", "GPUS", "WARM"],
            worker_rows,
            "no workers: start one with sllm worker --head-url URL",
        ),
    ]
    redis = status.get("redis") or {}
    if redis.get("writable") is False:
        refusal = [["refuses writes", str(redis.get("refusal"))]]
        tables.insert(0, _table("Redis (requests fail with 503)", ["STATE", "WHY"], refusal, ""))
    if cached_rows:
        tables.append(_table("Stored models", ["NODE", "SOURCE", "TIER", "GiB"], cached_rows, ""))
    if cannot:
        tables.append(_table("Backends workers cannot run", ["NODE", "BACKEND", "WHY"], cannot, ""))
    return tables
