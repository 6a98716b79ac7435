"""The server-worker message format, over a real socket pair: blocking on one end, the event loop on the other."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

from yoso.serving import wire
from yoso.serving.tasks import Task


def test_a_message_larger_than_any_socket_buffer_crosses_both_ways_while_the_loop_runs():
    task = Task("yolov3-tiny", 0.5, (os.urandom(8 << 20),), annotate=True, threads=2)
    ours, theirs = socket.socketpair()

    def echo() -> None:
        wire.send(theirs, wire.receive(theirs))

    async def round_trip() -> tuple[object, int]:
        loop = asyncio.get_running_loop()
        arrived, closed = loop.create_future(), loop.create_future()
        frames = wire.Frames(lambda transport: None, lambda frame: arrived.set_result(wire.decode(frame)),
                             lambda: closed.set_result(None))
        transport, _ = await loop.create_unix_connection(lambda: frames, sock=ours)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        transport.write(wire.encode(task))  # returns at once: the transport sends what the socket cannot take yet
        echoed = await arrived
        ticker.cancel()
        transport.close()
        await closed
        return echoed, ticks

    echoer = threading.Thread(target=echo)
    echoer.start()
    echoed, ticks = asyncio.run(round_trip())
    echoer.join()
    theirs.close()
    assert echoed == task
    assert ticks > 10  # the loop kept running while 16 MB went through


def received_until_closed(chunks: list[bytes]) -> list[object]:
    """The messages the event loop's end reads from a peer that sends `chunks` one by one, then closes."""
    ours, theirs = socket.socketpair()

    def send_and_close() -> None:
        for chunk in chunks:
            theirs.sendall(chunk)
        theirs.close()

    async def read_all() -> list[object]:
        loop = asyncio.get_running_loop()
        received, closed = ["not yet open"], loop.create_future()

        def opened(transport: asyncio.WriteTransport) -> None:
            received.remove("not yet open")  # before any message

        await loop.create_unix_connection(lambda: wire.Frames(opened, lambda frame: received.append(wire.decode(frame)),
                                                              lambda: closed.set_result(None)), sock=ours)
        sender = threading.Thread(target=send_and_close)
        sender.start()
        await closed
        sender.join()
        return received

    return asyncio.run(read_all())


def test_messages_arrive_whole_and_in_order_however_the_bytes_are_cut():
    messages = [f"message {i}" * i for i in range(50)]
    stream = b"".join(wire.encode(message) for message in messages)
    assert received_until_closed([stream]) == messages  # many in one read
    assert received_until_closed([stream[i:i + 7] for i in range(0, len(stream), 7)]) == messages  # split anywhere


def test_a_closed_peer_is_the_end_of_messages_on_either_end():
    ours, theirs = socket.socketpair()
    theirs.close()
    with pytest.raises(EOFError):
        wire.receive(ours)
    assert received_until_closed([]) == []


def test_a_message_cut_short_is_an_error_not_a_partial_message():
    ours, theirs = socket.socketpair()
    theirs.sendall(wire.encode("a message of some length")[:-3])
    theirs.close()
    with pytest.raises(EOFError):
        wire.receive(ours)
    assert received_until_closed([wire.encode("whole"), wire.encode("a message of some length")[:-3]]) == ["whole"]
