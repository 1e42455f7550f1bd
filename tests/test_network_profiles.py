"""A real call through each network profile of the lab (kiosk/netlab): the kiosk endpoint in the
impaired namespace calls a desk endpoint on a clean one, through the call server (and coturn where UDP
is blocked). Each test checks that the call survives with media both ways and that the feature meant
for that network acted; none asserts a timing (the figures are the bench's: bench/network.py).

Shorter than the named profiles where the test only needs one of their events (a cap lifted after
10 s instead of 20, a blackout at 6 s instead of 10): the same impairments, sooner.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kiosk.media.encoding import LOSS_LADDER_FROM
from kiosk.netlab.call import LabCallReport, run_lab_call
from kiosk.netlab.lab import address
from kiosk.netlab.model import Blackout, RateStep
from kiosk.netlab.profiles import Profile, profile


def _both_ways(report: LabCallReport) -> None:
    assert report.kiosk["ok"] and report.desk["ok"], (report.kiosk.get("outcome"), report.desk.get("outcome"))
    for received in (report.received_by_kiosk(), report.received_by_desk()):
        assert received["video_frames_decoded"] > 0 and received["audio_frames_played"] > 0, received


def _timeline(report: LabCallReport) -> list[dict[str, Any]]:
    """The kiosk's stats, one a second (`kiosk endpoint --stats-every 1`)."""
    return [dict(e["data"]) for e in report.kiosk_events if e.get("status") == "stats"]


def _until(p: Profile, seconds: float) -> Profile:
    return dataclasses.replace(
        p, up=dataclasses.replace(p.up, until=seconds), down=dataclasses.replace(p.down, until=seconds)
    )


EVERY_SECOND = ["--stats-every", "1"]


def test_a_clean_network_needs_no_repair(tmp_path: Path) -> None:
    report = run_lab_call(tmp_path, profile("clean"), seconds=8)
    _both_ways(report)
    assert report.kiosk["stats"]["audioFecPackets"] == 0  # no loss reported: no FEC sent
    assert report.impairer["up"]["lost"] == 0


def test_on_wifi_loss_brings_fec_and_nacks(tmp_path: Path) -> None:
    report = run_lab_call(tmp_path, profile("wifi"), seconds=15)
    _both_ways(report)
    assert report.impairer["up"]["lost"] > 0 and report.impairer["down"]["lost"] > 0
    heard = report.received_by_desk()
    # The desk reported the kiosk's losses; the kiosk's Opus encoder then added in-band FEC. (Counted
    # over the session: when the desk hung up first, its encoder had closed and the count read 0.)
    assert report.kiosk["stats"]["audioFecPackets"] > 0, (report.kiosk["stats"], heard)
    # The desk asked for lost video packets again (NACK) instead of a new keyframe.
    assert report.received_by_desk()["nacks_received"] + report.received_by_kiosk()["nacks_received"] > 0
    # A lost audio packet costs 20 ms of concealment, never a stall: every frame time is played.
    assert heard["audio_frames_concealed"] + heard["audio_frames_recovered"] > 0


def test_on_bad_wifi_the_playout_follows_the_jitter_and_the_picture_shrinks(
    tmp_path: Path,
) -> None:
    # 16 s of bad Wi-Fi: the loss average (reports about a second apart, some of them lost too) must
    # build up to the ladder's mark, and on a loaded machine the call takes longer to start.
    report = run_lab_call(tmp_path, _until(profile("bad-wifi"), 16.0), seconds=28, kiosk_args=EVERY_SECOND)
    _both_ways(report)
    heard = report.received_by_kiosk()
    delays = [
        t["participants"]["desk"]["audio_playout_delay_ms"]
        for t in _timeline(report)
        if t["participants"].get("desk", {}).get("audio_playout_delay_ms")
    ]
    assert delays, "no playout figures in the timeline"
    clean_target = 2 * 20.0  # at most two frames on a clean link
    assert max(delays) > 2 * clean_target  # it grew while the delay wandered by +/- 40 ms
    # ... and came back down once the link was clean (by at least two frames: on a loaded machine the
    # loop's own jitter keeps some of it).
    assert delays[-1] <= max(delays) - 40.0
    assert heard["audio_frames_concealed"] + heard["audio_frames_recovered"] > 0
    # The sustained loss took the picture down the ladder although the bandwidth was there: fewer
    # packets a frame, each a repair round trip the viewer would see at 30 fps.
    sizes = [tuple(t["videoSentSize"]) for t in _timeline(report) if t.get("videoSentSize")]
    assert sizes, "no picture sizes in the timeline"
    smallest = min(sizes, key=lambda size: size[0] * size[1])
    seen = [
        (t.get("videoSentSize"), t.get("videoSentLoss"), t.get("videoQuantizer")) for t in _timeline(report)
    ]
    assert max(loss or 0.0 for _, loss, _ in seen) >= LOSS_LADDER_FROM, seen  # the reports came back
    assert smallest[0] * smallest[1] <= 320 * 240, seen
    assert report.kiosk["stats"]["videoPictureChanges"] > 0


def test_on_a_thin_uplink_the_picture_shrinks_and_comes_back(tmp_path: Path) -> None:
    # The emulated camera's test pattern codes well at 640x480 in the video's share of the profile's
    # 400 kbit/s (about 300: VP8's quantizer under 10), and a picture that fits its bitrate keeps its
    # size. Under a cap it does not fit in, it shrinks; a real camera's picture costs more bits.
    thin = profile("thin-uplink")
    sooner = dataclasses.replace(
        thin, up=dataclasses.replace(thin.up, rate=(RateStep(0.0, 160_000), RateStep(10.0, 1_500_000)))
    )
    report = run_lab_call(tmp_path, sooner, seconds=40, kiosk_args=EVERY_SECOND)
    _both_ways(report)
    sizes = [tuple(t["videoSentSize"]) for t in _timeline(report) if t.get("videoSentSize")]
    assert sizes, "no picture sizes in the timeline"
    smaller = [s for s in sizes if s[0] < 640]
    assert smaller, f"the picture never shrank under the cap: {sorted(set(sizes))}"
    first_small = sizes.index(smaller[0])
    assert (640, 480) in sizes[first_small:], f"it never came back once the cap was lifted: {sizes}"
    assert report.kiosk["stats"]["videoPictureChanges"] >= 2


def test_a_handover_blackout_is_survived(tmp_path: Path) -> None:
    handover = profile("handover")
    blackout = (Blackout(start=6.0, length=2.0, every=30.0),)
    sooner = dataclasses.replace(
        handover,
        up=dataclasses.replace(handover.up, blackouts=blackout),
        down=dataclasses.replace(handover.down, blackouts=blackout),
    )
    report = run_lab_call(tmp_path, sooner, seconds=18, kiosk_args=EVERY_SECOND)
    _both_ways(report)
    assert report.impairer["up"]["blacked_out"] > 0 and report.impairer["down"]["blacked_out"] > 0
    frames = [t["participants"].get("desk", {}).get("video_frames_decoded") or 0 for t in _timeline(report)]
    stalls = [n for n in range(1, len(frames)) if frames[n] == frames[n - 1] and frames[n] > 0]
    assert stalls, f"no stall seen: was there a blackout? {frames}"
    assert frames[-1] > frames[stalls[-1]], f"video did not come back after the blackout: {frames}"


def test_with_udp_blocked_the_call_is_relayed_over_turn_tcp(tmp_path: Path) -> None:
    report = run_lab_call(tmp_path, profile("udp-blocked"), seconds=10, turn_tcp=True)
    _both_ways(report)
    assert report.impairer["up"]["blocked"] > 0  # the kiosk tried UDP (ICE, the TURN probe)
    pair = report.kiosk["ice"]["desk"]
    assert pair["local"] == "relay", pair  # the kiosk's side of the pair is its TURN allocation
    # coturn saw the kiosk's user over TCP: its allocation was made and used over TCP on 443.
    kiosk_over_tcp = [
        line
        for line in report.coturn_log.splitlines()
        if f"remote {address('a')}:" in line and ":door>" in line and "TCP" in line
    ]
    assert kiosk_over_tcp, report.coturn_log[-2000:]


def test_with_udp_blocked_the_call_is_relayed_over_turn_tls_on_443(tmp_path: Path) -> None:
    """The server offers TURN over UDP (3478) and over TLS on 443, as a server behind a firewall that
    lets only HTTPS out would: the kiosk finds UDP blocked and relays over TLS."""
    report = run_lab_call(tmp_path, profile("udp-blocked"), seconds=10, turn_tls=True)
    _both_ways(report)
    pair = report.kiosk["ice"]["desk"]
    assert pair["local"] == "relay", pair
    kiosk_over_tls = [
        line
        for line in report.coturn_log.splitlines()
        if f"remote {address('a')}:" in line and ":door>" in line and "TLS" in line
    ]
    assert kiosk_over_tls, report.coturn_log[-2000:]
