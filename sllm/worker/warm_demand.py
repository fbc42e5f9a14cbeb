"""How many warm processes a pool keeps: its configured size, or more while starts have
been coming in bursts. Pure.

A pool refills after a start only once no instance is loading (a refill importing torch
beside a load doubled it on 2 cores), so of several starts that come within seconds of
each other (a burst over several models, one model scaling out) only the first found a
warm process: a transformers start a few seconds after another paid a new interpreter
(4.69 s against 0.6 s). The pool therefore keeps as many idle processes as the most
starts it saw within ``BURST`` seconds, over the last ``WINDOW``, within its ceiling.
"""

from __future__ import annotations

from collections.abc import Sequence

# Starts this close together count as one burst.
BURST = 30.0
# How long a burst keeps the pool larger.
WINDOW = 600.0
# The most processes a pool keeps beyond its configured size.
MAX_EXTRA = 3


def peak_burst(starts: Sequence[float], now: float) -> int:
    """The most ``starts`` (monotonic times, in order) within any ``BURST`` seconds of
    the last ``WINDOW``."""
    recent = [t for t in starts if now - t <= WINDOW]
    best, first = 0, 0
    for last, at in enumerate(recent):
        while at - recent[first] > BURST:
            first += 1
        best = max(best, last - first + 1)
    return best


def target(size: int, starts: Sequence[float], now: float, room: int) -> int:
    """Idle processes to keep: ``size``, or the recent peak burst when larger, at most
    ``MAX_EXTRA`` more than ``size`` and ``room`` more than ``size`` (what memory allows
    beyond it). A pool of size 0 stays empty: its operator turned warm starts off."""
    if size <= 0:
        return 0
    extra = min(MAX_EXTRA, max(0, room), max(0, peak_burst(starts, now) - size))
    return size + extra
