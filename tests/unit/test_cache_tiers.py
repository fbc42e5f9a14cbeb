"""The tiered cache's pure decisions: what to evict, what a starting memory tier holds,
and each source's fastest tier."""

from __future__ import annotations

from pathlib import Path

from sllm.store.tiers import Cached, Tier, evictions, fastest, to_restore


def entry(name: str, size: int, used: float, tier: Tier = "disk", *sources: str) -> Cached:
    return Cached(name, Path(name), tier, size, sources or (name,), used)


def test_nothing_is_evicted_within_the_limit() -> None:
    assert evictions([entry("a", 4, 1), entry("b", 6, 2)], 10, set()) == []


def test_the_least_recently_used_go_first_until_it_fits() -> None:
    entries = [entry("new", 4, 30), entry("old", 4, 10), entry("mid", 4, 20)]
    assert [e.name for e in evictions(entries, 5, set())] == ["old", "mid"]


def test_a_pinned_model_is_never_evicted() -> None:
    entries = [entry("old", 4, 10), entry("new", 4, 30)]
    assert [e.name for e in evictions(entries, 4, {"old"})] == ["new"]
    # The pinned alone exceed the limit: everything else goes, they stay.
    assert [e.name for e in evictions(entries, 1, {"old", "new"})] == []


def test_models_never_used_by_a_deployment_go_before_used_ones() -> None:
    entries = [entry("used", 4, 10), entry("saved-by-cli", 4, 0.0)]
    assert [e.name for e in evictions(entries, 4, set())] == ["saved-by-cli"]


def test_each_source_is_reported_at_its_fastest_tier() -> None:
    entries = [
        entry("x-disk", 5, 1, "disk", "x"),
        entry("x-mem", 5, 1, "memory", "x"),
        entry("y-disk", 7, 1, "disk", "y", "y-alias"),
    ]
    best = fastest(entries)
    assert {s: c.tier for s, c in best.items()} == {"x": "memory", "y": "disk", "y-alias": "disk"}
    assert fastest(reversed(entries))["x"].tier == "memory"


def test_a_starting_memory_tier_holds_the_most_recently_used_that_fit() -> None:
    old, mid, new = entry("old", 4, 1.0), entry("mid", 6, 2.0), entry("new", 4, 3.0)
    assert [e.name for e in to_restore([old, mid, new], 10)] == ["new", "mid"]
    # One too large is passed over for older ones that fit.
    assert [e.name for e in to_restore([old, mid, new], 8)] == ["new", "old"]
    assert to_restore([old, mid, new], 0) == []


def test_a_starting_memory_tier_holds_only_the_newest_copy_of_a_source() -> None:
    stale = entry("m-v1", 4, 1.0, "disk", "m")
    fresh = entry("m-v2", 4, 2.0, "disk", "m", "alias")
    other = entry("o", 4, 0.5, "disk", "o")
    assert [e.name for e in to_restore([stale, fresh, other], 12)] == ["m-v2", "o"]
