"""A UDP probe across a link: the sender stamps numbered packets, the receiver reports what came.

    python -m kiosk.netlab.probe receive --port 9000 --seconds 5 > report.json
    python -m kiosk.netlab.probe send --to 10.77.2.2:9000 --count 1000 --interval 0.005 [--size 200]

The report: packets received (distinct, and duplicates), lost, reordered (arrived after a higher
number), the one-way delay's median and 95th percentile (both ends on one machine share the
monotonic clock), and the received bit rate. It is how the lab's own tests check a profile, and how
a person can check a link before blaming a call.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from typing import Any

from kiosk.netlab.model import quantile

_HEADER = struct.Struct("!Id")  # sequence number, send time (CLOCK_MONOTONIC)


def send(host: str, port: int, count: int, interval: float, size: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for n in range(count):
        due = start + n * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        payload = _HEADER.pack(n, time.monotonic())
        sock.sendto(payload + bytes(max(0, size - len(payload))), (host, port))
    sock.close()


def receive(port: int, seconds: float, expected: int = 0) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.2)
    seen: set[int] = set()
    delays: list[float] = []
    duplicates = reordered = 0
    highest = -1
    total_bytes = 0
    first = last = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            continue
        now = time.monotonic()
        number, sent = _HEADER.unpack_from(data)
        total_bytes += len(data)
        first = first or now
        last = now
        if number in seen:
            duplicates += 1
            continue
        seen.add(number)
        delays.append(now - sent)
        if number < highest:
            reordered += 1
        highest = max(highest, number)
    sock.close()
    span = last - first
    return {
        "received": len(seen),
        "duplicates": duplicates,
        "reordered": reordered,
        "lost": max(0, expected - len(seen)) if expected else None,
        "delay_p50_ms": quantile(delays, 0.5) * 1000 if delays else None,
        "delay_p95_ms": quantile(delays, 0.95) * 1000 if delays else None,
        "bits_per_second": total_bytes * 8 / span if span > 0 else None,
        "numbers": sorted(seen),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiosk.netlab.probe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sender = commands.add_parser("send")
    sender.add_argument("--to", required=True, help="host:port")
    sender.add_argument("--count", type=int, default=1000)
    sender.add_argument("--interval", type=float, default=0.005)
    sender.add_argument("--size", type=int, default=200)
    receiver = commands.add_parser("receive")
    receiver.add_argument("--port", type=int, required=True)
    receiver.add_argument("--seconds", type=float, default=5.0)
    receiver.add_argument("--expect", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "send":
        host, _, port = args.to.rpartition(":")
        send(host, int(port), args.count, args.interval, args.size)
    else:
        json.dump(receive(args.port, args.seconds, args.expect), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
