"""Messages between the server and a worker over a socket pair: a pickle behind its 8-byte length.

The worker blocks on its end (`send`, `receive`); the server reads and writes its end on the event loop
(`encode`, `read`), so no thread and no interpreter-lock handover stands between a worker and the loop.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct

_LENGTH = struct.Struct("!Q")


def encode(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


async def read(stream: asyncio.StreamReader) -> object:
    """The next message; asyncio.IncompleteReadError once the other end has closed."""
    (length,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    return pickle.loads(await stream.readexactly(length))


def send(sock: socket.socket, message: object) -> None:
    sock.sendall(encode(message))


def receive(sock: socket.socket) -> object:
    """The next message; EOFError once the other end has closed."""
    (length,) = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))
    return pickle.loads(_receive_exactly(sock, length))


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    while view:
        received = sock.recv_into(view)
        if not received:
            raise EOFError("the other end closed the connection")
        view = view[received:]
    return buffer
