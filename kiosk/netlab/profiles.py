"""The named network profiles: what a kiosk's link does, in its send (up) and receive (down)
directions. The other side of the call, the call server and the TURN server are on a clean network.

| profile | up (the kiosk sends) | down (the kiosk receives) |
|---|---|---|
| clean | nothing | nothing |
| wifi | 1 % random loss, 20 +/- 10 ms | the same |
| bad-wifi | 5 % bursty loss (mean burst 3), 60 +/- 40 ms, 1 % reordered | the same |
| thin-uplink | capped at 400 kbit/s, then 1.5 Mbit/s from 20 s | nothing |
| handover | a 2 s blackout every 30 s (from 10 s) | the same |
| udp-blocked | no UDP at all (TCP gets through) | the same |

"+/- x ms" is the jitter's standard deviation. The rate caps are the `tbf` qdisc on the kiosk's veth in
the lab (kiosk.netlab.lab), or the model's token bucket where the impairer routes a real kiosk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from kiosk.netlab.model import Blackout, GilbertElliott, Impairment, RateStep


@dataclass(frozen=True)
class Profile:
    name: str
    up: Impairment
    down: Impairment
    description: str

    @property
    def needs_turn_over_tcp(self) -> bool:
        return self.up.block_udp or self.down.block_udp

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Profile:
        data = json.loads(text)
        return cls(data["name"], _impairment(data["up"]), _impairment(data["down"]), data["description"])


def _impairment(data: dict[str, Any]) -> Impairment:
    fields = dict(data)
    if fields.get("bursty") is not None:
        fields["bursty"] = GilbertElliott(**fields["bursty"])
    fields["blackouts"] = tuple(Blackout(**b) for b in fields.get("blackouts", ()))
    fields["rate"] = tuple(RateStep(**r) for r in fields.get("rate", ()))
    return Impairment(**fields)


_WIFI = Impairment(loss=0.01, delay=0.020, jitter=0.010)
_BAD_WIFI = Impairment(
    bursty=GilbertElliott.for_rate(0.05, 3.0), delay=0.060, jitter=0.040, reorder=0.01, reorder_delay=0.030
)
_HANDOVER = Impairment(blackouts=(Blackout(start=10.0, length=2.0, every=30.0),))
_BLOCKED = Impairment(block_udp=True)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("clean", Impairment(), Impairment(), "no impairment"),
        Profile("wifi", _WIFI, _WIFI, "1 % random loss, 20 +/- 10 ms each way"),
        Profile(
            "bad-wifi", _BAD_WIFI, _BAD_WIFI, "5 % bursty loss (mean burst 3), 60 +/- 40 ms, 1 % reordered"
        ),
        Profile(
            "thin-uplink",
            Impairment(rate=(RateStep(0.0, 400_000), RateStep(20.0, 1_500_000)), queue_bytes=25_000),
            Impairment(),
            "the kiosk's sending capped at 400 kbit/s, then 1.5 Mbit/s from 20 s",
        ),
        Profile("handover", _HANDOVER, _HANDOVER, "a 2 s blackout every 30 s, from 10 s"),
        Profile("udp-blocked", _BLOCKED, _BLOCKED, "no UDP at all: calls must go through TURN over TCP/TLS"),
    )
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown network profile {name!r} (profiles: {', '.join(PROFILES)})") from None
