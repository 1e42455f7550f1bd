"""What a link does to each packet of one direction, decided by a seeded random generator.

A `LinkModel` is asked `fate(now, size, is_udp)` for every packet, in order, and answers with the
times at which copies of it are delivered: none (lost), one, or two (duplicated). The same seed and
the same packets give the same answers, so a run can be repeated.

- Random loss: each packet lost with probability `loss`.
- Bursty loss (Gilbert-Elliott): a good and a bad state; in the bad state packets are lost with
  probability `bad_loss`. From good the link turns bad with probability p per packet, from bad it
  recovers with probability r: the mean burst is 1/r packets and the share of time bad p/(p+r).
  `GilbertElliott.for_rate(rate, mean_burst)` gives the p and r of a wanted loss rate. The chain
  steps once per packet while packets come at least every `GE_SLOT` (a call's media: 100-150 a
  second), and once per slot in a gap: a burst is a few tens of milliseconds of interference, so a
  lone packet a second later (a TCP retransmission) meets a link that has long recovered, not the
  same burst again.
- Delay with jitter: a base delay plus a jitter that wanders in time (an Ornstein-Uhlenbeck process:
  standard deviation `jitter`, correlation time `jitter_correlation`), cut at +/- 2 sd, never below
  zero. A Wi-Fi link's delay comes from its queue and its retries, which change over tens of
  milliseconds, not independently packet by packet; so packets keep their order unless reordering
  says otherwise (a later packet is never delivered before an earlier one by jitter alone), and the
  delay's median and spread are the profile's.
- Reordering: a packet is held back by `reorder_delay` extra with probability `reorder`, so the
  packets after it overtake it.
- Duplication: a second copy 1 ms after the first, with probability `duplicate`.
- Blackouts: during each (start, length) window, periodic or not, nothing gets through.
- A rate cap: a token bucket in bits per second with a queue of `queue_bytes`; a packet that does not
  fit the queue is dropped (tail drop), one that fits waits its turn.
- UDP blocked: every UDP packet is dropped (TCP gets through).
- An end: from `until` seconds on, the link is clean again (the rate steps and the UDP block stay).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

GE_SLOT = 0.010  # seconds: the bursty-loss chain's step when packets are sparse


@dataclass(frozen=True)
class GilbertElliott:
    p: float  # good -> bad, per packet
    r: float  # bad -> good, per packet
    bad_loss: float = 1.0  # loss probability in the bad state
    good_loss: float = 0.0

    @classmethod
    def for_rate(cls, rate: float, mean_burst: float) -> GilbertElliott:
        """Lose `rate` of the packets in bursts of `mean_burst` packets on average."""
        if not 0 < rate < 1 or mean_burst < 1:
            raise ValueError("rate must be between 0 and 1, mean_burst at least 1")
        r = 1 / mean_burst
        p = rate * r / (1 - rate)  # time bad = p / (p + r) = rate
        return cls(p=p, r=r)


@dataclass(frozen=True)
class Blackout:
    start: float  # seconds from the start of the run
    length: float
    every: float = 0.0  # repeat with this period; 0: once

    def covers(self, t: float) -> bool:
        if t < self.start:
            return False
        offset = t - self.start
        if self.every > 0:
            offset %= self.every
        return offset < self.length


@dataclass(frozen=True)
class RateStep:
    """From `at` seconds on, the rate is `bits_per_second` (0: no cap)."""

    at: float
    bits_per_second: int


@dataclass(frozen=True)
class Impairment:
    """One direction's impairment, as a profile describes it."""

    loss: float = 0.0
    bursty: GilbertElliott | None = None
    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, standard deviation
    jitter_correlation: float = 0.2  # seconds: how fast the delay wanders
    reorder: float = 0.0
    reorder_delay: float = 0.02
    duplicate: float = 0.0
    blackouts: tuple[Blackout, ...] = ()
    rate: tuple[RateStep, ...] = ()  # in user space; the lab can also cap with tbf
    queue_bytes: int = 64_000
    block_udp: bool = False
    # From this many seconds on, no loss, delay, reordering, duplication or blackout (0: never);
    # the rate steps go on. For a test that sees a receiver adapt to a bad link and then recover.
    until: float = 0.0

    @property
    def clean(self) -> bool:
        return self == Impairment()


@dataclass
class DirectionStats:
    packets: int = 0
    bytes: int = 0
    lost: int = 0  # random and bursty loss
    blacked_out: int = 0
    blocked: int = 0  # UDP blocked
    queue_drops: int = 0  # did not fit the rate cap's queue
    duplicated: int = 0
    reordered: int = 0
    delivered: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class LinkModel:
    impairment: Impairment
    seed: int = 0
    started_at: float = 0.0  # the clock's value at the start of the run (blackouts, rate steps)
    stats: DirectionStats = field(default_factory=DirectionStats)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._bad = False
        self._ge_at: float | None = None  # when the bursty-loss chain last stepped
        self._noise = 0.0  # the jitter process, in units of its standard deviation
        self._noise_at: float | None = None
        self._last_delivery = 0.0  # jitter never reorders: a packet leaves after the one before it
        self._queue_free_at = 0.0  # the rate cap's queue: when the link is free again

    def _rate_at(self, t: float) -> int:
        rate = 0
        for step in self.impairment.rate:
            if t >= step.at:
                rate = step.bits_per_second
        return rate

    def _lost(self, now: float) -> bool:
        m = self.impairment
        if m.bursty is not None:
            ge = m.bursty
            # The state moves first, then the packet meets it.
            steps = 1 if self._ge_at is None else max(1, int((now - self._ge_at) / GE_SLOT))
            self._ge_at = now
            if steps == 1:
                if self._bad:
                    self._bad = self._random.random() >= ge.r
                else:
                    self._bad = self._random.random() < ge.p
            else:
                # n steps of the two-state chain at once: it forgets its state as (1 - p - r)^n.
                settled = ge.p / (ge.p + ge.r)
                bad_now = settled + ((1.0 if self._bad else 0.0) - settled) * (1 - ge.p - ge.r) ** steps
                self._bad = self._random.random() < bad_now
            if self._random.random() < (ge.bad_loss if self._bad else ge.good_loss):
                return True
        return m.loss > 0 and self._random.random() < m.loss

    def _jitter(self, now: float) -> float:
        m = self.impairment
        if m.jitter <= 0:
            return 0.0
        if self._noise_at is None:
            self._noise = self._random.gauss(0.0, 1.0)
        else:
            keep = math.exp(-max(0.0, now - self._noise_at) / m.jitter_correlation)
            self._noise = self._noise * keep + math.sqrt(1 - keep * keep) * self._random.gauss(0.0, 1.0)
        self._noise_at = now
        return max(-2.0, min(2.0, self._noise)) * m.jitter

    def fate(self, now: float, size: int, is_udp: bool = True) -> list[float]:
        """When the copies of this packet arrive: [] if it is lost."""
        m = self.impairment
        s = self.stats
        s.packets += 1
        s.bytes += size
        t = now - self.started_at
        if m.block_udp and is_udp:
            s.blocked += 1
            return []
        impaired = m.until <= 0 or t < m.until
        if impaired and any(b.covers(t) for b in m.blackouts):
            s.blacked_out += 1
            return []
        if impaired and self._lost(now):
            s.lost += 1
            return []
        leaves = now
        rate = self._rate_at(t)
        if rate > 0:
            start = max(now, self._queue_free_at)
            waiting_bits = (start - now) * rate
            if waiting_bits / 8 + size > m.queue_bytes:
                s.queue_drops += 1
                return []
            self._queue_free_at = start + size * 8 / rate
            leaves = self._queue_free_at
        # Strictly after the one before: a timer heap does not keep the order of equal times.
        delay = max(0.0, m.delay + self._jitter(now)) if impaired else 0.0
        arrives = max(leaves + delay, self._last_delivery + 1e-6)
        self._last_delivery = arrives
        if impaired and m.reorder > 0 and self._random.random() < m.reorder:
            s.reordered += 1
            arrives += m.reorder_delay  # held back: the next ones overtake it
        s.delivered += 1
        times = [arrives]
        if impaired and m.duplicate > 0 and self._random.random() < m.duplicate:
            s.duplicated += 1
            times.append(arrives + 0.001)
        return times


def mean_burst_length(lost: list[bool]) -> float:
    """The mean length of the runs of losses in a sequence (for checking a model)."""
    runs = [len(run) for run in "".join("x" if x else "." for x in lost).split(".") if run]
    return sum(runs) / len(runs) if runs else 0.0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
