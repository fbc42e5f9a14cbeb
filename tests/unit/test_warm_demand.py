"""How many warm processes a pool keeps as starts come."""

from __future__ import annotations

from sllm.worker.warm_demand import BURST, MAX_EXTRA, WINDOW, peak_burst, target


def test_starts_close_together_are_a_burst_and_the_pool_grows_to_it() -> None:
    starts = [100.0, 101.0, 103.0]  # three models at once
    assert peak_burst(starts, 104.0) == 3
    assert target(1, starts, 104.0, room=10) == 3


def test_spread_out_starts_keep_the_configured_size() -> None:
    starts = [0.0, BURST + 1, 2 * BURST + 2, 3 * BURST + 3]
    assert peak_burst(starts, 4 * BURST) == 1
    assert target(1, starts, 4 * BURST, room=10) == 1


def test_a_burst_is_forgotten_after_the_window() -> None:
    starts = [100.0, 101.0, 102.0]
    assert target(1, starts, 100.0 + WINDOW - 1, room=10) == 3
    assert target(1, starts, 102.0 + WINDOW + 1, room=10) == 1


def test_growth_is_bounded_by_memory_and_a_ceiling_and_size_0_stays_off() -> None:
    burst = [float(i) for i in range(20)]
    assert target(1, burst, 20.0, room=10) == 1 + MAX_EXTRA
    assert target(1, burst, 20.0, room=1) == 2
    assert target(1, burst, 20.0, room=-3) == 1
    assert target(0, burst, 20.0, room=10) == 0
