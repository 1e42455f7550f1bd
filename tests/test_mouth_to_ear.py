"""The mouth-to-ear figure (kiosk/netlab/mouth_to_ear.py) finds a known delay in a played voice."""

from __future__ import annotations

import numpy as np
import pytest

from kiosk.media.emulated import speech_like_voice
from kiosk.media.sample_clock import SampleClock
from kiosk.netlab.mouth_to_ear import delays, delays_between, locate, percentiles, production_clock

RATE = 48000


def test_a_window_is_found_where_it_is_in_the_loop():
    voice = speech_like_voice()
    for offset in (0, 12345, len(voice) - RATE // 2):  # the last one wraps round the loop's end
        window = np.roll(voice, -offset)[:RATE]
        found, match = locate(window, voice)
        assert found == offset and match > 0.99


def test_noise_does_not_match():
    noise = np.random.default_rng(1).normal(0, 3000, RATE).astype(np.int16)
    assert locate(noise, speech_like_voice())[1] < 0.3


def test_a_delayed_voice_with_a_lost_second_gives_its_delay():
    voice = speech_like_voice()
    mic = SampleClock(RATE)
    start = 1000.0
    total = 10 * RATE  # the microphone spoke for ten seconds, from `start`
    for n in range(0, total, 960):
        mic.mark(start + n / RATE, n)
    delay = 0.180
    played = np.tile(voice, 3)[:total].copy()
    played[3 * RATE : 4 * RATE] = 0  # a second of silence (concealment faded out): left out
    heard = SampleClock(RATE)
    for n in range(0, total, 960):
        heard.mark(start + delay + n / RATE, n)
    found = delays(played, heard, voice, mic)
    assert len(found) == 9
    assert all(d == pytest.approx(delay, abs=0.001) for d in found)
    p50, p95 = percentiles(found)
    assert p50 == pytest.approx(180, abs=1) and p95 == pytest.approx(180, abs=1)


def test_a_delay_longer_than_a_second_is_not_folded():
    # 2.5 s late: the same loop position was produced 2.5 s and 6.5 s before; the later one counts.
    voice = speech_like_voice()
    mic, heard = SampleClock(RATE), SampleClock(RATE)
    total = 12 * RATE
    for n in range(0, total, 960):
        mic.mark(n / RATE, n)
        heard.mark(2.5 + n / RATE, n)
    found = delays(np.tile(voice, 3)[:total], heard, voice, mic)
    assert found and all(d == pytest.approx(2.5, abs=0.001) for d in found)


def test_a_talker_heard_from_mid_loop_gets_its_production_clock_from_a_recording():
    # A browser's fake microphone loops the voice from wherever it was when the page began to listen;
    # a recording of it (with a gap where the tap was idle) gives back when each loop position was
    # produced, and with it the delay at the far end.
    voice = speech_like_voice()
    first = 7 * RATE + 1234  # the loop position the recording starts at
    total = 14 * RATE
    positions = (first + np.arange(total)) % len(voice)
    recorded = voice[positions].copy()
    recorded[5 * RATE : 6 * RATE] = 0  # the tap saw silence for a second
    tap = SampleClock(RATE, [(50.0 + n / RATE, n) for n in range(0, total, 4800)])
    mic = production_clock(recorded, tap, voice)
    assert len(mic.points) == 13
    # Recorded sample k is loop position first + k, produced at 50 + k / RATE; the clock says so for
    # positions past the loop's end too.
    for k in (0, 3 * RATE + 17, 12 * RATE):
        produced = mic.time_of(mic.points[0][1] + k)
        assert produced == pytest.approx(50.0 + k / RATE, abs=1e-6)
        assert (mic.points[0][1] + k) % len(voice) == positions[k]

    delay = 0.250
    heard = SampleClock(RATE, [(50.0 + delay + n / RATE, n) for n in range(0, total, 960)])
    found = delays(voice[positions], heard, voice, mic)
    assert len(found) >= 12 and all(d == pytest.approx(delay, abs=0.001) for d in found)


def test_clocks_round_trip_through_a_file(tmp_path):
    clock = SampleClock(RATE, [(1.5, 0), (1.52, 960)])
    clock.save(tmp_path / "c.json")
    again = SampleClock.load(tmp_path / "c.json")
    assert again.points == clock.points and again.time_of(480) == pytest.approx(1.51)


async def test_a_call_between_two_emulated_endpoints_gives_its_mouth_to_ear_delay(tmp_path):
    # The emulated microphone and speaker keep their clocks beside what the speaker wrote; from them
    # and the played voice, the delay of a real call on loopback comes out, positive and under a
    # second (what it is exactly is the bench's business).
    import asyncio

    from calls_support import endpoints, new_session_id, running_server, wait_until

    from kiosk.media.emulated import EmulatedDevices

    heard_dir, spoken_dir = tmp_path / "door-played", tmp_path / "desk-played"
    door_devices = EmulatedDevices(width=160, height=120, fps=10, speaker_dir=heard_dir)
    desk_devices = EmulatedDevices(width=160, height=120, fps=10, speaker_dir=spoken_dir)  # a voice
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", devices=door_devices) as (door,),
        endpoints(server.url, tmp_path, "desk", devices=desk_devices) as (desk,),
    ):
        session = new_session_id()
        await door.join(session)
        await desk.join(session)
        await wait_until(lambda: door.stats_from("desk"), 10, "the desk at the door")
        await asyncio.sleep(4.0)
        await door.calls.end_session()
        await desk.calls.end_session()
    found = delays_between(heard_dir, "desk", spoken_dir)
    print("mouth-to-ear on loopback, s:", [round(d, 3) for d in found])  # shown with -s
    assert len(found) >= 2, found
    assert all(0 < d < 1.0 for d in found), found


async def test_a_microphone_keeps_its_clock_only_when_it_is_measured(tmp_path):
    from kiosk.media.emulated import EmulatedDevices

    plain = EmulatedDevices().open_microphone("emulated-mic")
    await plain.next_frame()
    assert plain.clock is None  # a kiosk left running for weeks keeps nothing per frame
    plain.close()
    measured = EmulatedDevices(speaker_dir=tmp_path).open_microphone("emulated-mic")
    for _ in range(3):
        await measured.next_frame()
    measured.close()
    saved = SampleClock.load(tmp_path / "microphone.clock.json")
    assert [n for _, n in saved.points] == [0, 960, 1920]
