"""Peer connections closed while aiortc is still connecting them (a rebuilt connection, the switch
to an SFU) fail quietly: no "Task exception was never retrieved" in the kiosk's log."""

from __future__ import annotations

import asyncio
import gc
import logging

from aiortc import RTCPeerConnection

from kiosk.calls.peer import allow_close_while_connecting


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def connect_then_close(delay: float) -> None:
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    for pc in (offerer, answerer):
        allow_close_while_connecting(pc)
    offerer.addTransceiver("audio")
    offerer.addTransceiver("video")
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)  # aiortc starts connecting here
    await asyncio.sleep(delay)
    await answerer.close()
    await offerer.close()


async def test_closing_a_connection_that_is_still_connecting_logs_no_error() -> None:
    collect = Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collect)
    try:
        # Closed at every stage of connecting: ICE checks, DTLS handshake, starting the RTP senders.
        # Without allow_close_while_connecting a few of these 60 leave a failed task behind.
        for i in range(60):
            await connect_then_close((i % 20) * 0.003)
        await asyncio.sleep(0.3)
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        logger.removeHandler(collect)
    assert not [m for m in collect.messages if "never retrieved" in m], collect.messages
