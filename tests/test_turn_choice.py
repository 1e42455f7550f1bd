"""aiortc relays through the first TURN URL it can use, so the SDK puts first the transport that gets
through this network: UDP when the TURN server answers a STUN binding over UDP, else TCP or TLS.
Real UDP sockets; the end-to-end case (a network with UDP blocked, coturn on 443) is in
tests/test_network_profiles.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from kiosk.calls.turn import forget_turn_probes, prefer_working_turn, turn_transport, udp_answers
from kiosk.protocol import IceServer


@pytest.fixture(autouse=True)
def fresh_probes() -> Iterator[None]:
    forget_turn_probes()
    yield
    forget_turn_probes()


class StunAnswerer(asyncio.DatagramProtocol):
    """Answers any STUN request with a binding success carrying its transaction id, as coturn does."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(b"\x01\x01\x00\x00" + data[4:20], addr)


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _servers(udp_port: int) -> list[IceServer]:
    return [
        {"urls": ["stun:127.0.0.1:3478"]},
        {
            "urls": [f"turn:127.0.0.1:{udp_port}?transport=udp", "turns:turn.example:443?transport=tcp"],
            "username": "u",
            "credential": "c",
        },
    ]


def test_turn_urls_are_read_as_aiortc_reads_them() -> None:
    assert turn_transport("turn:example.org") == ("udp", "example.org", 3478)
    assert turn_transport("turn:example.org:443?transport=tcp") == ("tcp", "example.org", 443)
    assert turn_transport("turns:example.org") == ("tls", "example.org", 5349)
    assert turn_transport("turn:[2001:db8::1]:3478") == ("udp", "2001:db8::1", 3478)
    assert turn_transport("stun:example.org") is None


async def test_a_turn_server_that_answers_over_udp_keeps_udp_first() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(StunAnswerer, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        assert await udp_answers("127.0.0.1", port)
        servers = await prefer_working_turn(_servers(port))
        (turn,) = [s for s in servers if "username" in s]
        assert turn["urls"][0] == f"turn:127.0.0.1:{port}?transport=udp"
        assert turn["username"] == "u" and turn["credential"] == "c"
    finally:
        transport.close()


async def test_without_udp_to_the_turn_server_tcp_or_tls_goes_first_and_is_remembered() -> None:
    port = _closed_udp_port()
    assert not await udp_answers("127.0.0.1", port)
    probes: list[tuple[str, int]] = []

    async def counting_probe(host: str, probe_port: int) -> bool:
        probes.append((host, probe_port))
        return await udp_answers(host, probe_port)

    servers = await prefer_working_turn(_servers(port), probe=counting_probe)
    assert servers[0]["urls"] == [
        "turns:turn.example:443?transport=tcp",
        f"turn:127.0.0.1:{port}?transport=udp",
    ]
    assert servers[1]["urls"] == ["stun:127.0.0.1:3478"]
    again = await prefer_working_turn(_servers(port), probe=counting_probe)
    assert again == servers and len(probes) == 1  # the next call does not wait for the probe again


async def test_with_no_choice_to_make_nothing_is_probed() -> None:
    async def no_probe(host: str, port: int) -> bool:
        raise AssertionError("probed")

    only_udp: list[IceServer] = [{"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "c"}]
    assert await prefer_working_turn(only_udp, probe=no_probe) == only_udp
    assert await prefer_working_turn([], probe=no_probe) == []
