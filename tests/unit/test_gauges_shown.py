"""The head's gauges keep their series between passes: a changed value is set, a
deleted model's series goes, nothing else is touched."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from sllm.head.gauges import Shown


def test_series_are_set_when_changed_and_removed_when_gone() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("g", "a gauge", ["model"], registry=registry)
    shown = Shown()
    shown.show(gauge, {("a",): 1.0, ("b",): 2.0})
    assert registry.get_sample_value("g", {"model": "a"}) == 1.0
    # Set behind Shown's back: an unchanged value is not set again.
    gauge.labels("a").set(7.0)
    shown.show(gauge, {("a",): 1.0, ("b",): 3.0})
    assert registry.get_sample_value("g", {"model": "a"}) == 7.0
    assert registry.get_sample_value("g", {"model": "b"}) == 3.0
    shown.show(gauge, {("b",): 3.0})
    assert registry.get_sample_value("g", {"model": "a"}) is None
    assert registry.get_sample_value("g", {"model": "b"}) == 3.0
