"""A worker relays a stream's chunks as its backend's writes bring them: together when
they came together, in order, lines split across reads put back together."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sllm.edge.messages import ResultMessage, encode_chunks
from sllm.worker.proxy import MAX_BATCH, sse_batches, stream_part


class Body:
    def __init__(self, *reads: bytes) -> None:
        self.reads = reads

    async def iter_any(self) -> AsyncIterator[bytes]:
        for data in self.reads:
            yield data


async def batches(*reads: bytes) -> list[list[str]]:
    return [b async for b in sse_batches(Body(*reads).iter_any())]


async def test_chunks_that_arrive_together_come_out_together() -> None:
    got = await batches(
        b'data: {"a":1}\n\n: keep-alive\n\ndata: {"a"',
        b':2}\r\n\r\ndata: {"a":3}\n\ndata: [DONE]\n\n',
    )
    assert got == [['{"a":1}'], ['{"a":2}', '{"a":3}', "[DONE]"]]
    # A last line without its newline is still read.
    assert await batches(b'data: {"a":1}\n\ndata: [DONE]') == [['{"a":1}'], ["[DONE]"]]


async def test_a_batch_holds_at_most_max_batch_chunks() -> None:
    body = b"".join(b'data: {"n":%d}\n\n' % i for i in range(2 * MAX_BATCH + 2))
    got = await batches(body)
    assert [len(b) for b in got] == [MAX_BATCH, MAX_BATCH, 2]
    assert [c for b in got for c in b] == [f'{{"n":{i}}}' for i in range(2 * MAX_BATCH + 2)]


def test_a_batch_is_one_message_of_numbered_chunks() -> None:
    raw = encode_chunks("t", 2, 5, ['{"a":1}', '{"a":2}', '{"a":3}'])
    message = ResultMessage.decode(raw)
    assert message.kind == "chunks" and not message.terminal
    assert (message.seq, message.chunks) == (5, [{"a": 1}, {"a": 2}, {"a": 3}])
    # Less the chunks read already: the rest, numbered from the first left.
    assert message.from_seq(7) == ResultMessage("t", 2, 7, "chunks", [{"a": 3}])
    # One chunk travels as before.
    one = ResultMessage.decode(encode_chunks("t", 2, 5, ['{"a":1}']))
    assert (one.kind, one.chunks) == ("chunk", [{"a": 1}])
    assert ResultMessage("t", 2, 6, "done", {"x": 1}).chunks == []


def test_a_batch_is_read_up_to_the_end_of_its_stream() -> None:
    assert stream_part(['{"a":1}', '{"a":2}']) == (['{"a":1}', '{"a":2}'], False, None)
    assert stream_part(['{"a":1}', "[DONE]", "late"]) == (['{"a":1}'], True, None)
    # Chunks the backend sent before its error still go to the client, then the error.
    error = '{"error": {"message": "boom"}}'
    assert stream_part(['{"a":1}', error, '{"a":2}']) == (['{"a":1}'], True, error)
