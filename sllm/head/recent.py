"""What this head saw over the last minutes, in fixed buckets, for the dashboard. Pure:
every call takes ``now``."""

from __future__ import annotations

from dataclasses import dataclass, field

BUCKET_SECONDS = 5
WINDOW_SECONDS = 600


@dataclass
class _Bucket:
    start: int
    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    cold_starts: int = 0
    cold_start_sum: float = 0.0


@dataclass
class Recent:
    bucket_seconds: int = BUCKET_SECONDS
    window_seconds: int = WINDOW_SECONDS
    _buckets: dict[int, _Bucket] = field(default_factory=dict)

    def _at(self, now: float) -> _Bucket:
        start = int(now) // self.bucket_seconds * self.bucket_seconds
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = _Bucket(start)
            oldest = start - self.window_seconds
            for stale in [s for s in self._buckets if s <= oldest]:
                del self._buckets[stale]
        return bucket

    def request(self, now: float, seconds: float, ok: bool) -> None:
        bucket = self._at(now)
        bucket.requests += 1
        bucket.errors += 0 if ok else 1
        bucket.latency_sum += seconds

    def cold_start(self, now: float, seconds: float) -> None:
        bucket = self._at(now)
        bucket.cold_starts += 1
        bucket.cold_start_sum += seconds

    def series(self, now: float) -> list[dict[str, float]]:
        """One point per bucket of the window, oldest first (empty buckets included):
        requests per second, errors per second, mean latency and cold starts."""
        last = int(now) // self.bucket_seconds * self.bucket_seconds
        points = []
        for start in range(
            last - self.window_seconds + self.bucket_seconds, last + 1, self.bucket_seconds
        ):
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
