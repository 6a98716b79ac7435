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
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        writer.write(wire.encode(task))  # returns at once: the transport sends what the socket cannot take yet
        echoed = await wire.read(reader)
        ticker.cancel()
        writer.close()
        return echoed, ticks

    echoer = threading.Thread(target=echo)
    echoer.start()
    echoed, ticks = asyncio.run(round_trip())
    echoer.join()
    theirs.close()
    assert echoed == task
    assert ticks > 10  # the loop kept running while 16 MB went through


def test_a_closed_peer_is_the_end_of_messages_on_either_end():
    ours, theirs = socket.socketpair()
    theirs.close()
    with pytest.raises(EOFError):
        wire.receive(ours)

    async def read_from_closed() -> None:
        first, second = socket.socketpair()
        second.close()
        reader, writer = await asyncio.open_unix_connection(sock=first)
        try:
            with pytest.raises(asyncio.IncompleteReadError):
                await wire.read(reader)
        finally:
            writer.close()

    asyncio.run(read_from_closed())


def test_a_message_cut_short_is_an_error_not_a_partial_message():
    ours, theirs = socket.socketpair()
    theirs.sendall(wire.encode("a message of some length")[:-3])
    theirs.close()
    with pytest.raises(EOFError):
        wire.receive(ours)
