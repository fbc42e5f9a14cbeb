"""What this head saw over the last minutes, in fixed buckets, for the dashboard: its
traffic as a whole, and each model's (rate, errors, latency and time to first token
percentiles, tokens/s, queue). Pure: every call takes ``now``.

Latencies go into a fixed set of log-spaced bins per bucket, not a list, so a bucket's
size does not grow with its traffic; a percentile is read inside its bin by linear
interpolation, as Prometheus' ``histogram_quantile`` does (bins a tenth of a decade wide:
within 26% of the value).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKET_SECONDS = 5
WINDOW_SECONDS = 600
# Upper edges of the latency bins: 1 ms to 1000 s, ten to a decade; one more bin past.
EDGES = tuple(0.001 * 10 ** (i / 10) for i in range(61))


def _bin(seconds: float) -> int:
    return bisect.bisect_left(EDGES, seconds)


def quantile(bins: list[int], q: float) -> float:
    """The ``q`` quantile of the samples in ``bins`` (0 with none), interpolated inside
    the bin where it falls; past the last edge, that edge."""
    total = sum(bins)
    if not total:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(bins):
        if n and seen + n >= rank:
            if i >= len(EDGES):
                return EDGES[-1]
            low = EDGES[i - 1] if i else 0.0
            return low + (EDGES[i] - low) * (rank - seen) / n
        seen += n
    return EDGES[-1]


@dataclass
class _Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    cold_starts: int = 0
    cold_start_sum: float = 0.0


@dataclass
class _ModelBucket:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    queue: int = 0  # the longest queue sampled in the bucket
    latency: list[int] = field(default_factory=lambda: [0] * (len(EDGES) + 1))
    ttft: list[int] = field(default_factory=lambda: [0] * (len(EDGES) + 1))


@dataclass
class Recent:
    bucket_seconds: int = BUCKET_SECONDS
    window_seconds: int = WINDOW_SECONDS
    _buckets: dict[int, _Bucket] = field(default_factory=dict)
    # Bucket start -> model -> its figures; only models that were deployed when seen.
    _models: dict[int, dict[str, _ModelBucket]] = field(default_factory=dict)

    def _start(self, now: float) -> int:
        return int(now) // self.bucket_seconds * self.bucket_seconds

    def _at(self, now: float) -> _Bucket:
        start = self._start(now)
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = _Bucket(start)
            oldest = start - self.window_seconds
            for stale in [s for s in self._buckets if s <= oldest]:
                del self._buckets[stale]
            for stale in [s for s in self._models if s <= oldest]:
                del self._models[stale]
        return bucket

    def _model(self, now: float, model: str) -> _ModelBucket:
        self._at(now)  # forgets what left the window
        per_model = self._models.setdefault(self._start(now), {})
        return per_model.setdefault(model, _ModelBucket())

    def request(
        self,
        now: float,
        seconds: float,
        ok: bool,
        model: str | None = None,
        ttft: float | None = None,
        tokens: int = 0,
    ) -> None:
        """A request ended; ``model`` only for a model that exists (a name a client
        made up must not make a series)."""
        bucket = self._at(now)
        bucket.requests += 1
        bucket.errors += 0 if ok else 1
        bucket.latency_sum += seconds
        if model is None:
            return
        mine = self._model(now, model)
        mine.requests += 1
        mine.errors += 0 if ok else 1
        mine.tokens += tokens
        mine.latency[_bin(seconds)] += 1
        if ttft is not None:
            mine.ttft[_bin(ttft)] += 1

    def queue(self, now: float, model: str, length: int) -> None:
        mine = self._model(now, model)
        mine.queue = max(mine.queue, length)

    def cold_start(self, now: float, seconds: float) -> None:
        bucket = self._at(now)
        bucket.cold_starts += 1
        bucket.cold_start_sum += seconds

    def _starts(self, now: float) -> range:
        last = self._start(now)
        return range(
            last - self.window_seconds + self.bucket_seconds, last + 1, self.bucket_seconds
        )

    def series(self, now: float) -> list[dict[str, float]]:
        """One point per bucket of the window, oldest first (empty buckets included):
        requests per second, errors per second, mean latency and cold starts."""
        points = []
        for start in self._starts(now):
            b = self._buckets.get(start) or _Bucket(start)
            points.append(
                {
                    "t": float(start),
                    "rps": b.requests / self.bucket_seconds,
                    "errors_per_s": b.errors / self.bucket_seconds,
                    "latency_s": b.latency_sum / b.requests if b.requests else 0.0,
                    "cold_starts": float(b.cold_starts),
                    "cold_start_s": b.cold_start_sum / b.cold_starts if b.cold_starts else 0.0,
                }
            )
        return points

    def model_series(self, now: float, models: list[str]) -> dict[str, list[dict[str, float]]]:
        """Each of ``models``' points over the window, as ``series``: requests and
        errors per second, latency and time to first token p50 and p99 (bin edges),
        generated tokens per second and the longest queue sampled."""
        out: dict[str, list[dict[str, float]]] = {}
        for model in models:
            points = []
            for start in self._starts(now):
                b = self._models.get(start, {}).get(model) or _ModelBucket()
                points.append(
                    {
                        "t": float(start),
                        "rps": b.requests / self.bucket_seconds,
                        "errors_per_s": b.errors / self.bucket_seconds,
                        "p50_s": quantile(b.latency, 0.5),
                        "p99_s": quantile(b.latency, 0.99),
                        "ttft_p50_s": quantile(b.ttft, 0.5),
                        "ttft_p99_s": quantile(b.ttft, 0.99),
                        "tokens_per_s": b.tokens / self.bucket_seconds,
                        "queue": float(b.queue),
                    }
                )
            out[model] = points
        return out
