"""udp_delay_busy_loop: how long a call's packets wait in the kernel when the loop is busy.

Everything in a kiosk shares one asyncio loop: the screen (Kivy draws a frame in a loop callback),
each participant's audio playout, signaling, and every ICE socket. asyncio's selector loop reads one
datagram per socket per turn of the loop, so a socket that receives faster than the loop turns
queues its packets in the kernel: the delay grows by the queue, up to the receive buffer, and then
packets are dropped. A 640x480 picture and its audio are about 200 packets a second on one socket;
a frame drawn on the loop takes 10-20 ms on a Pi.

Both sides: a loop kept busy 15 ms per turn (a UI frame drawn on it), one socket receiving 200
datagrams a second for a few seconds from a thread, each stamped with its send time.
- subject: the SDK's reader (kiosk/calls/udp.py), every waiting datagram per wakeup;
- baseline: asyncio's own reader, one datagram per turn, in the same run.
The figure is the 95th percentile of the send-to-delivery delay, median over runs. Notes: the share
of datagrams lost (the kernel's receive buffer overflowing).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.harness import Benchmark, RunSettings, Samples
from kiosk.calls import udp

RATE = 200  # datagrams a second: a 640x480 picture and its audio on one socket
SECONDS = 3.0
TURN_BUSY_S = 0.015  # one UI frame drawn on the loop
PAYLOAD = 1000  # bytes, about a video packet
RUNS_FULL, RUNS_QUICK = 3, 1


class _Delays(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.delays: list[float] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        (sent,) = struct.unpack_from("!d", data)
        self.delays.append(time.monotonic() - sent)


def _send(address: tuple[str, int], stop: threading.Event) -> int:
    sent = 0
    padding = bytes(PAYLOAD - 8)
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        while not stop.is_set() and time.monotonic() - started < SECONDS:
            sender.sendto(struct.pack("!d", time.monotonic()) + padding, address)
            sent += 1
            time.sleep(max(0.0, started + sent / RATE - time.monotonic()))
    return sent


def _draw_a_frame() -> None:
    time.sleep(TURN_BUSY_S)  # blocking on purpose: a frame drawn on the loop holds it


async def _busy_turns(stop: asyncio.Event) -> None:
    while not stop.is_set():
        _draw_a_frame()
        await asyncio.sleep(0)


async def _one_run(reader: Callable[[Any], None]) -> tuple[float, float]:
    """The p95 delay (ms) and the share lost, with `reader` as the datagram transports' reader."""
    from asyncio import selector_events

    transport_class = selector_events._SelectorDatagramTransport
    current = transport_class._read_ready
    transport_class._read_ready = reader  # type: ignore[method-assign]  # bound when the transport is made
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_datagram_endpoint(_Delays, local_addr=("127.0.0.1", 0))
    finally:
        transport_class._read_ready = current  # type: ignore[method-assign]
    stop_loop, stop_sender = asyncio.Event(), threading.Event()
    busy = asyncio.ensure_future(_busy_turns(stop_loop))
    try:
        sent = await asyncio.to_thread(_send, transport.get_extra_info("sockname"), stop_sender)
        await asyncio.sleep(0.5)  # what is still queued comes in (or was dropped)
    finally:
        stop_sender.set()
        stop_loop.set()
        await busy
        transport.close()
    delays = sorted(protocol.delays)
    p95 = delays[min(len(delays) - 1, int(0.95 * len(delays)))] if delays else float("inf")
    return p95 * 1000, 1 - len(delays) / sent if sent else 1.0


async def _measure(settings: RunSettings) -> Samples:
    stock = udp.stock_read_ready()
    if stock is None:
        raise RuntimeError("this Python's asyncio has no selector datagram transport to compare with")
    subject, baseline, lost, lost_baseline = [], [], [], []
    for _ in range(settings.repeats(RUNS_FULL, RUNS_QUICK)):
        p95, share = await _one_run(udp._read_ready_dry)
        subject.append(p95)
        lost.append(share)
        p95, share = await _one_run(stock)
        baseline.append(p95)
        lost_baseline.append(share)
    return Samples(
        subject,
        baseline,
        notes={
            "lost_share": round(statistics.median(lost), 4),
            "lost_share_baseline": round(statistics.median(lost_baseline), 4),
            "rate_per_s": RATE,
            "loop_turn_ms": TURN_BUSY_S * 1000,
        },
    )


BENCHMARKS = [
    Benchmark(
        name="udp_delay_busy_loop",
        unit="ms",
        target_ratio=None,
        target_value=50.0,
        measures="95th percentile of the send-to-delivery delay of 200 datagrams a second on one "
        "socket while the loop is busy 15 ms per turn (a UI frame drawn on it), median over runs, "
        "with the SDK's reader (kiosk/calls/udp.py: every waiting datagram per wakeup)",
        baseline_measures="the same with asyncio's own reader (one datagram per socket per turn)",
        run=_measure,
    ),
]
