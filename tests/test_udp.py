"""UDP sockets are read dry at each wakeup of the loop (kiosk/calls/udp.py): a busy loop must not
leave a call's packets queueing in the kernel, one datagram per turn."""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any

from kiosk.calls import udp
from kiosk.calls.client import Calls


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.errors: list[Exception] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


async def _endpoint() -> tuple[asyncio.DatagramTransport, Collect, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
    await asyncio.sleep(0)  # the reader is registered a turn after connection_made
    return transport, protocol, transport.get_extra_info("sockname")


def _send(address: tuple[str, int], count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(count):
            sender.sendto(n.to_bytes(4, "big"), address)


def _queued(transport: asyncio.DatagramTransport) -> None:
    sock = transport.get_extra_info("socket")
    assert select.select([sock.fileno()], [], [], 2.0)[0], "the datagrams never reached the socket"


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_waiting_burst_is_read_in_one_wakeup():
    assert udp.read_datagrams_dry()
    transport, protocol, address = await _endpoint()
    try:
        _send(address, 20)
        _queued(transport)
        # Two turns: in the first the selector reports the socket and our task resumes first; the
        # reader runs after it. asyncio's own reader would have taken two of the twenty by then.
        await _turns(2)
        assert [int.from_bytes(d, "big") for d in protocol.received] == list(range(20))
    finally:
        transport.close()


async def test_a_flooded_socket_gives_the_loop_back_after_the_bound():
    assert udp.read_datagrams_dry()
    transport, protocol, address = await _endpoint()
    try:
        burst = udp.DATAGRAMS_PER_WAKEUP * 2 + 10
        _send(address, burst)
        _queued(transport)
        await _turns(2)
        assert len(protocol.received) == udp.DATAGRAMS_PER_WAKEUP  # one wakeup's worth, not all
        for _ in range(20):
            await _turns(1)
        assert len(protocol.received) == burst  # the rest at the next turns, in order
        assert [int.from_bytes(d, "big") for d in protocol.received] == list(range(burst))
    finally:
        transport.close()


async def test_a_refused_send_is_an_error_for_the_protocol_not_a_crash():
    # A connected UDP socket whose peer has no listener: the kernel's ICMP "port unreachable" comes
    # back as ECONNREFUSED from recvfrom, which the protocol hears through error_received.
    assert udp.read_datagrams_dry()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    transport, protocol = await loop.create_datagram_endpoint(Collect, remote_addr=("127.0.0.1", closed_port))
    try:
        transport.sendto(b"anyone?")
        for _ in range(100):
            if protocol.errors:
                break
            await asyncio.sleep(0.01)
        assert protocol.errors and isinstance(protocol.errors[0], ConnectionRefusedError)
        assert not transport.is_closing()
    finally:
        transport.close()


def test_the_sdk_reads_datagrams_dry_once_it_is_made(tmp_path):
    Calls("http://127.0.0.1:9", recording_dir=tmp_path)
    from asyncio import selector_events

    assert selector_events._SelectorDatagramTransport._read_ready is udp._read_ready_dry
    assert udp.stock_read_ready() is not udp._read_ready_dry
