"""Live migration's pure decisions: which busy instances scale in by moving their
requests, where the requests go, when the destination has warmed up enough, and the
dummy's prefix cache that makes a warm-up pay."""

from __future__ import annotations

from sllm.backends.dummy_prefixes import PrefixCache
from sllm.head.migration import (
    CLOSE_ENOUGH,
    MAX_ROUNDS,
    another_round,
    destinations,
    to_rebalance,
)
from sllm.head.scaling import InstanceLoad, ScalingPolicy, decide

# Four requests an instance, each instance meant to hold up to 4 (threshold).
POLICY = ScalingPolicy(0, 4, 4, keep_alive=60, max_concurrency=4)


def ready(name: str, outstanding: int, last_active: float = 0.0) -> InstanceLoad:
    return InstanceLoad(name, "ready", outstanding, last_active)


def test_a_busy_instance_past_keep_alive_is_emptied_into_the_others() -> None:
    loads = [ready("a", 2), ready("b", 1)]
    # 3 in flight want one instance: the one with fewer requests moves them.
    assert decide(POLICY, 0, loads, now=100).migrate == ["b"]
    # Not before keep_alive: a load that just dropped may come back.
    assert decide(POLICY, 0, loads, now=30).migrate == []
    # Never without the concurrency to check the others' room against.
    plain = ScalingPolicy(0, 4, 4, keep_alive=60)
    assert decide(plain, 0, loads, now=100).migrate == []


def test_requests_move_only_where_the_instances_that_stay_have_room() -> None:
    # 5 in flight want 2 of the 3 instances: the idle one stops, nothing moves.
    loads = [ready("a", 3), ready("b", 2), ready("c", 0)]
    decision = decide(POLICY, 0, loads, now=100)
    assert decision.stop == ["c"] and decision.migrate == []
    # 5 in flight on 3 busy instances want 2: b's one request fits beside a or c.
    loads = [ready("a", 3), ready("b", 1), ready("c", 1)]
    assert decide(POLICY, 0, loads, now=100).migrate == ["b"]
    # 9 in flight want 2 of 3 (threshold 8), but the two full ones have no room for b's.
    wide = ScalingPolicy(0, 4, 8, keep_alive=60, max_concurrency=4)
    full = [ready("a", 4), ready("b", 1), ready("c", 4)]
    assert decide(wide, 0, full, now=100).migrate == []
    assert decide(wide, 0, [ready("a", 3), ready("b", 1), ready("c", 4)], now=100).migrate == ["b"]
    # Four in flight on four instances, threshold 4: three can go, into the one left;
    # the one with most requests stays.
    loads = [ready("a", 1), ready("b", 1), ready("c", 1), ready("d", 1)]
    assert sorted(decide(POLICY, 0, loads, now=100).migrate) == ["a", "b", "c"]
    # With room for 2 each, two move (into the two that stay, 2 each).
    tight = ScalingPolicy(0, 4, 4, keep_alive=60, max_concurrency=2)
    assert len(decide(tight, 0, loads, now=100).migrate) == 2


def test_destinations_fill_the_least_loaded_instances_with_room() -> None:
    loads = [ready("src", 3), ready("x", 2), ready("y", 0), InstanceLoad("z", "starting", 0, 0)]
    assert destinations("src", loads, 3, 3) == ["y", "y", "x"]
    assert destinations("src", loads, 3, 5) == ["y", "y", "x", "y"]  # then no room
    assert destinations("src", [ready("src", 2)], 4, 2) == []


def test_warm_up_rounds_go_on_while_the_source_outruns_them_up_to_a_bound() -> None:
    assert another_round(CLOSE_ENOUGH + 1, 1)
    assert not another_round(CLOSE_ENOUGH, 1)
    assert not another_round(100, MAX_ROUNDS)


def test_the_dummys_prefix_cache_charges_only_new_words() -> None:
    cache = PrefixCache(limit=8)
    assert cache.prefill("a b c".split()) == 3
    assert cache.prefill("a b c d e".split()) == 2
    assert cache.prefill("a x".split()) == 1
    assert cache.prefill("z b c".split()) == 3  # a prefix, not any shared words
    cache.prefill("p q r s t u v w".split())  # fills the cache: the oldest go
    assert cache.prefill("a b c".split()) == 3


def test_an_instance_far_ahead_of_another_sheds_half_its_lead() -> None:
    assert to_rebalance([ready("a", 9), ready("b", 1), ready("c", 5)]) == ("a", 4)
    assert to_rebalance([ready("a", 4), ready("b", 1)]) is None  # a lead of 3
    # Only ready instances count: a starting one takes nothing yet.
    assert to_rebalance([ready("a", 8), InstanceLoad("b", "starting", 0, 0)]) is None
    assert to_rebalance([ready("a", 8)]) is None


def test_transformers_instances_warm_up_a_migration_unless_batching_statically() -> None:
    from sllm.backends.registry import get_backend

    transformers = get_backend("transformers")
    assert transformers.keeps_prefixes({"pretrained_model_name_or_path": "/m"})
    assert not transformers.keeps_prefixes({"batching": "static"})
    assert not get_backend("onnx").keeps_prefixes({})
