"""Which models' queues a head knows to be empty, so that a slot coming free on one of
their instances costs no claim: on the offer path every request ends with a free slot,
and a claim that finds nothing is a Redis round trip per request.

A queue is known empty from a claim that found nothing until a task is pushed onto it;
every push onto an empty queue is announced on the control channel ('queued'). The claim's
answer and the announcement come on different connections, so either may come first: a
claim counts the announcements seen before it was sent, and its finding holds only while
no other came since.
"""

from __future__ import annotations


class EmptyQueues:
    def __init__(self) -> None:
        self._announced: dict[str, int] = {}  # model -> 'queued' events seen
        self._found: dict[str, int] = {}  # model -> events seen when a claim was sent

    def before_claim(self, model: str) -> int:
        """What a claim of ``model`` about to be sent hands to ``found_empty``."""
        return self._announced.get(model, 0)

    def found_empty(self, model: str, before: int) -> None:
        self._found[model] = before

    def queued(self, model: str) -> None:
        """A task was pushed onto ``model``'s empty queue."""
        self._announced[model] = self._announced.get(model, 0) + 1

    def forget(self, model: str | None = None) -> None:
        """Not known any more: ``model``'s (a look is due anyway), or every queue's
        (announcements may have been lost)."""
        if model is None:
            self._found.clear()
        else:
            self._found.pop(model, None)

    def drop(self, model: str) -> None:
        """Nothing kept of a model no longer deployed."""
        self._announced.pop(model, None)
        self._found.pop(model, None)

    def __contains__(self, model: str) -> bool:
        return self._found.get(model, -1) == self._announced.get(model, 0)
