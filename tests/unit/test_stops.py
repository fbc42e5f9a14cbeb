"""Stop strings are cut exactly, however the text is split into pieces."""

from __future__ import annotations

import pytest

from sllm.backends.stops import StopScanner


def run(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    out = []
    for piece in pieces:
        out.append(scanner.feed(piece))
        if scanner.stopped:
            break
    out.append(scanner.flush())
    return "".join(out), scanner.stopped


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["hello", " world"], [], ("hello world", False)),
        (["hello", " wor", "ld"], ["world"], ("hello ", True)),
        (["hel", "lo", " wo", "rld"], ["lo w"], ("hel", True)),
        (["abc"], ["b", "c"], ("a", True)),
        (["wo", "rk"], ["world"], ("work", False)),
        (["a", "b", "c", "d"], ["abcd"], ("", True)),
        (["xx", "x", "y"], ["xxy"], ("x", True)),
        (["end"], [""], ("end", False)),
    ],
)
def test_stop_cut_exactly(pieces: list[str], stops: list[str], expected: tuple[str, bool]) -> None:
    assert run(pieces, stops) == expected


def test_text_that_may_start_a_stop_is_held_until_decided() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.feed("go ST") == "go "
    assert scanner.feed("ill") == "STill"
    assert not scanner.stopped


def test_every_split_of_a_text_gives_the_same_result() -> None:
    text = "the cat sat on the mat and the dog sat"
    for stops in (["sat on"], ["dog"], ["t a", "mat"], ["nowhere"]):
        whole = run([text], stops)
        for size in (1, 2, 3, 5):
            pieces = [text[i : i + size] for i in range(0, len(text), size)]
            assert run(pieces, stops) == whole
