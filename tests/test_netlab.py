"""The network lab (kiosk/netlab): the link model does what each profile says, reproducibly from a seed,
and the lab carries real packets between namespaces through it.

The model tests are pure. The lab tests build network namespaces (root, iproute2, /dev/net/tun; they
fail, not skip, without them) and send UDP probes (kiosk.netlab.probe) across.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiosk.netlab.lab import Lab, address
from kiosk.netlab.model import (
    Blackout,
    GilbertElliott,
    Impairment,
    LinkModel,
    RateStep,
    mean_burst_length,
    quantile,
)
from kiosk.netlab.profiles import PROFILES, Profile, profile

ROOT = Path(__file__).resolve().parent.parent


def run_model(
    impairment: Impairment, count: int = 20000, interval: float = 0.02, seed: int = 1
) -> tuple[LinkModel, list[list[float]]]:
    model = LinkModel(impairment, seed=seed)
    fates = [model.fate(n * interval, 200) for n in range(count)]
    return model, fates


# ----------------------------------------------------------------------------- the model


def test_random_loss_is_the_rate_asked_and_repeats_with_the_seed() -> None:
    model, fates = run_model(Impairment(loss=0.05))
    lost = sum(1 for f in fates if not f) / len(fates)
    assert 0.045 < lost < 0.055 and model.stats.lost == sum(1 for f in fates if not f)
    _, again = run_model(Impairment(loss=0.05))
    assert again == fates  # the same seed, the same fates
    _, other = run_model(Impairment(loss=0.05), seed=2)
    assert other != fates


def test_bursty_loss_has_the_rate_and_the_mean_burst_asked() -> None:
    # At a call's packet rate (one every 7 ms: audio and video together), bursts of 3 packets.
    bursty = Impairment(bursty=GilbertElliott.for_rate(0.05, 3.0))
    _, fates = run_model(bursty, count=60000, interval=0.007)
    lost = [not f for f in fates]
    assert 0.04 < sum(lost) / len(lost) < 0.06
    assert 2.6 < mean_burst_length(lost) < 3.4
    # Random loss of the same rate comes in bursts of about one.
    _, random_fates = run_model(Impairment(loss=0.05), count=60000, interval=0.007)
    assert mean_burst_length([not f for f in random_fates]) < 1.2


def test_a_burst_is_a_stretch_of_time_so_sparse_packets_do_not_share_one() -> None:
    # A lone packet a second after the last (a TCP retransmission) meets a link that has long since
    # recovered: the same rate of loss, but no longer in runs.
    bursty = Impairment(bursty=GilbertElliott.for_rate(0.05, 3.0))
    _, fates = run_model(bursty, count=20000, interval=1.0)
    lost = [not f for f in fates]
    assert 0.04 < sum(lost) / len(lost) < 0.06
    assert mean_burst_length(lost) < 1.2


def test_delay_and_jitter_have_the_median_and_spread_asked_and_keep_the_order() -> None:
    _, fates = run_model(Impairment(delay=0.060, jitter=0.040))
    delays = [f[0] - n * 0.02 for n, f in enumerate(fates)]
    assert 0.050 < quantile(delays, 0.5) < 0.070
    assert quantile(delays, 0.95) > quantile(delays, 0.5) + 0.03  # it does spread
    assert min(delays) >= 0 and max(delays) <= 0.060 + 2 * 0.040 + 0.02
    arrivals = [f[0] for f in fates]
    assert arrivals == sorted(arrivals)  # jitter alone never reorders


def test_reordering_and_duplication_happen_at_their_rates() -> None:
    model, fates = run_model(Impairment(delay=0.01, reorder=0.01, reorder_delay=0.05, duplicate=0.02))
    arrivals = [f[0] for f in fates]
    overtaken = sum(1 for n in range(len(arrivals) - 1) if arrivals[n] > arrivals[n + 1])
    assert 0.007 < overtaken / len(arrivals) < 0.013
    duplicates = sum(1 for f in fates if len(f) == 2)
    assert 0.015 < duplicates / len(fates) < 0.025 and model.stats.duplicated == duplicates


def test_blackouts_stop_everything_in_their_windows() -> None:
    model = LinkModel(Impairment(blackouts=(Blackout(start=10.0, length=2.0, every=30.0),)))
    times = [t / 10 for t in range(0, 800)]  # 0 to 80 s
    delivered = [bool(model.fate(t, 100)) for t in times]
    dark = [t for t, ok in zip(times, delivered, strict=True) if not ok]
    assert dark and all(10 <= t < 12 or 40 <= t < 42 or 70 <= t < 72 for t in dark)
    assert len(dark) == 3 * 20


def test_a_rate_cap_queues_then_drops_and_changes_at_its_time() -> None:
    # 1 Mbit/s offered (1250 bytes every 10 ms) into a 400 kbit/s cap, then 1.5 Mbit/s from 20 s.
    model = LinkModel(Impairment(rate=(RateStep(0, 400_000), RateStep(20, 1_500_000)), queue_bytes=25_000))
    first = [model.fate(n * 0.01, 1250) for n in range(2000)]  # 0 to 20 s
    delivered = sum(1 for f in first if f)
    assert 0.37 < delivered * 1250 * 8 / 20 / 1_000_000 < 0.43  # about 400 kbit/s got through
    queued = [f[0] - n * 0.01 for n, f in enumerate(first) if f]
    assert max(queued) <= 25_000 * 8 / 400_000 + 0.01  # the queue is bounded
    later = [model.fate(25 + n * 0.01, 1250) for n in range(500)]
    assert all(later)  # 1 Mbit/s fits in 1.5


def test_an_impairment_with_an_end_leaves_the_link_clean_after_it() -> None:
    bad = Impairment(loss=0.2, delay=0.06, jitter=0.04, until=10.0)
    model, fates = run_model(bad, count=1000)  # 0 to 20 s
    before, after = fates[:500], fates[500:]
    assert sum(1 for f in before if not f) > 50
    assert all(after)
    delays_after = [f[0] - (500 + n) * 0.02 for n, f in enumerate(after)]
    assert max(delays_after[25:]) < 0.001  # once the queue of delayed packets has gone


def test_udp_blocked_drops_udp_only() -> None:
    model = LinkModel(Impairment(block_udp=True))
    assert model.fate(0.0, 100, is_udp=True) == []
    assert model.fate(0.0, 100, is_udp=False) == [0.000001]
    assert model.stats.blocked == 1


def test_the_profiles_are_the_issue_s() -> None:
    assert set(PROFILES) == {"clean", "wifi", "bad-wifi", "thin-uplink", "handover", "udp-blocked"}
    assert profile("wifi").up == profile("wifi").down and profile("wifi").up.loss == 0.01
    bad = profile("bad-wifi").up
    assert bad.bursty is not None and round(1 / bad.bursty.r) == 3 and bad.reorder == 0.01
    assert profile("thin-uplink").up.rate[0].bits_per_second == 400_000 and profile("thin-uplink").down.clean
    assert profile("udp-blocked").needs_turn_over_tcp
    with pytest.raises(ValueError, match="unknown network profile 'lte'"):
        profile("lte")


# ----------------------------------------------------------------------------- the lab


def probe(lab: Lab, sender: str, receiver: str, count: int, interval: float, size: int = 200) -> dict:
    listen = subprocess.Popen(
        lab.command(
            receiver,
            [
                sys.executable,
                "-m",
                "kiosk.netlab.probe",
                "receive",
                "--port",
                "9000",
                "--seconds",
                str(count * interval + 1.5),
                "--expect",
                str(count),
            ],
        ),
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    time.sleep(0.3)
    subprocess.run(
        lab.command(
            sender,
            [
                sys.executable,
                "-m",
                "kiosk.netlab.probe",
                "send",
                "--to",
                f"{address(receiver)}:9000",
                "--count",
                str(count),
                "--interval",
                str(interval),
                "--size",
                str(size),
            ],
        ),
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    out, _ = listen.communicate(timeout=60)
    return dict(json.loads(out))


def test_the_lab_impairs_the_kiosk_s_link_both_ways_and_nothing_else(tmp_path: Path) -> None:
    with Lab(profile("wifi"), tmp_path, seed=3) as lab:
        up = probe(lab, "a", "b", 1000, 0.004)
        down = probe(lab, "b", "a", 1000, 0.004)
        servers = probe(lab, "b", "s", 500, 0.004)
        stats = lab.stats()
    for report in (up, down):
        assert 3 <= report["lost"] <= 20  # 1 % of 1000
        assert report["delay_p50_ms"] > 15  # the model's 20 ms (a loaded machine only adds to it)
    # b <-> s is not the kiosk's link: no loss, and none of its delay (both share the machine's own).
    assert servers["lost"] == 0
    assert servers["delay_p50_ms"] + 10 < min(up["delay_p50_ms"], down["delay_p50_ms"])
    assert stats["up"]["lost"] == up["lost"] and stats["down"]["lost"] == down["lost"]  # type: ignore[index]


def test_a_blackout_in_the_lab_cuts_the_link_for_its_length(tmp_path: Path) -> None:
    handover = Profile(
        "test-handover",
        Impairment(blackouts=(Blackout(start=1.0, length=0.5, every=2.0),)),
        Impairment(blackouts=(Blackout(start=1.0, length=0.5, every=2.0),)),
        "a short blackout every 2 s",
    )
    with Lab(handover, tmp_path) as lab:
        report = probe(lab, "a", "b", 1000, 0.004)  # 4 s
    missing = sorted(set(range(1000)) - set(report["numbers"]))
    runs = []
    for number in missing:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    long_runs = [len(run) for run in runs if len(run) > 20]
    assert 1 <= len(long_runs) <= 3 and all(100 <= n <= 135 for n in long_runs)  # 0.5 s of 4 ms packets


def test_udp_blocked_in_the_lab_lets_tcp_through(tmp_path: Path) -> None:
    with Lab(profile("udp-blocked"), tmp_path) as lab:
        report = probe(lab, "a", "b", 100, 0.005)
        server = subprocess.Popen(
            lab.command("s", [sys.executable, "-c", _TCP_ECHO]), stdout=subprocess.PIPE, cwd=ROOT
        )
        time.sleep(0.5)
        client = subprocess.run(
            lab.command("a", [sys.executable, "-c", _TCP_CLIENT.format(host=address("s"))]),
            capture_output=True,
            text=True,
            timeout=20,
        )
        server.kill()
    assert report["received"] == 0
    assert client.stdout.strip() == "hello", client.stderr


_TCP_ECHO = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9443)); s.listen()
c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
"""
_TCP_CLIENT = """
import socket
c = socket.create_connection(("{host}", 9443), timeout=10); c.sendall(b"hello"); print(c.recv(100).decode())
"""


def test_a_thin_uplink_is_capped_by_tbf_on_the_kiosk_s_veth(tmp_path: Path) -> None:
    with Lab(profile("thin-uplink"), tmp_path) as lab:
        # 1 Mbit/s offered for 3 s: about 400 kbit/s arrives.
        report = probe(lab, "a", "b", 750, 0.004, size=500)
        back = probe(lab, "b", "a", 750, 0.004, size=500)
    assert 300_000 < report["bits_per_second"] < 480_000
    assert back["bits_per_second"] > 900_000  # the other direction is not capped


def test_the_lab_says_what_it_lacks_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiosk.netlab import lab as lab_module

    monkeypatch.setattr(lab_module.os, "geteuid", lambda: 1000)
    with pytest.raises(lab_module.LabError, match="needs root"):
        Lab(profile("clean"), tmp_path).build()
    assert socket.gethostname()  # (the host is untouched: nothing was built)
