"""The kiosk's call logic driving two real endpoints through a real server."""

from __future__ import annotations

import asyncio

from calls_support import endpoints, running_server, video_frames, wait_until

from kiosk.calls import CallStatus
from kiosk.controller import KioskController, Phase


async def test_call_answer_mute_and_hang_up(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        door_kiosk = KioskController(door.calls)
        desk_kiosk = KioskController(desk.calls, auto_answer_after=0.2)  # an intercom answers by itself
        phases: list[Phase] = []
        door_kiosk.add_observer(lambda state: phases.append(state.phase))

        await door_kiosk.call("desk")
        assert door_kiosk.state.phase == Phase.RINGING_OUT and door_kiosk.state.peer_name == "Desk"
        await wait_until(lambda: door_kiosk.state.phase == Phase.IN_CALL, 10, "door in call")
        await wait_until(lambda: desk_kiosk.state.phase == Phase.IN_CALL, 10, "desk in call")
        await wait_until(lambda: video_frames(door, "desk"), 15, "media")

        door_kiosk.toggle_mute()
        assert door_kiosk.state.muted and door.calls.session.audio_muted
        muted = (await desk.events.wait_for("on_user_muted"))[0]
        assert muted.uid == "door" and muted.audio_muted

        modes = [m.mode for m in door.calls.get_audio_output_modes()]
        door_kiosk.cycle_audio_mode()
        assert door_kiosk.state.audio_mode == modes[1] == door.calls.session.audio_mode

        # the desk presses its end button: the ringing-flow end, both sides back to idle
        desk_kiosk.end_pressed()
        await desk.events.wait_for("on_call_end_button_pressed")
        await wait_until(lambda: desk_kiosk.state.phase == Phase.IDLE, 10, "desk idle")
        await wait_until(lambda: door_kiosk.state.phase == Phase.IDLE, 10, "door idle")
        assert door_kiosk.state.message == "Desk hung up"
        assert desk_kiosk.state.message == "Call with Door ended"
        assert door.calls.session is None and desk.calls.session is None
        assert door.calls.get_active_call() is None and desk.calls.get_active_call() is None
        log = await door.calls.get_call_logs()
        assert log.calls[0].status == CallStatus.ENDED
        assert phases[:3] == [Phase.IDLE, Phase.RINGING_OUT, Phase.IN_CALL]


async def test_ringing_hold_rejects_and_outcomes_in_words(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        door_kiosk, desk_kiosk = KioskController(door.calls), KioskController(desk.calls)
        await door_kiosk.call("desk")
        await wait_until(lambda: desk_kiosk.state.phase == Phase.RINGING_IN, 10, "desk rings")
        assert desk_kiosk.state.peer_name == "Door"
        await desk_kiosk.end_held()  # hold the end button: reject
        await wait_until(lambda: door_kiosk.state.phase == Phase.IDLE, 10, "door idle")
        assert door_kiosk.state.message == "Desk declined the call"
        assert desk_kiosk.state.phase == Phase.IDLE

        # the caller gives up while it rings: the receiver stops ringing, with words
        await door_kiosk.call("desk")
        await wait_until(lambda: desk_kiosk.state.phase == Phase.RINGING_IN, 10, "desk rings again")
        await door_kiosk.hang_up()  # the caller gives up
        await wait_until(lambda: desk_kiosk.state.phase == Phase.IDLE, 10, "ringing stops")
        assert desk_kiosk.state.message == "Door hung up before you answered"

        # a press of the end button while ringing answers
        await desk_kiosk.call("door")
        await wait_until(lambda: door_kiosk.state.phase == Phase.RINGING_IN, 10, "door rings")
        await door_kiosk.end_pressed()
        await wait_until(lambda: desk_kiosk.state.phase == Phase.IN_CALL, 10, "answered by the end button")
        await door_kiosk.hang_up()
        await wait_until(lambda: desk_kiosk.state.phase == Phase.IDLE, 10, "over")


async def test_unknown_contact_is_a_message_not_a_crash(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door") as (door,),
    ):
        kiosk = KioskController(door.calls)
        await kiosk.call("nobody")
        assert kiosk.state.phase == Phase.IDLE and "Could not call nobody" in kiosk.state.message
        kiosk.toggle_mute()  # no call: nothing to do, nothing raised
        kiosk.cycle_audio_mode()
        await asyncio.sleep(0)


async def test_the_ringtone_plays_while_ringing_and_stops_when_answered(tmp_path):
    from kiosk.ringer import Ringer

    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        door_kiosk, desk_kiosk = KioskController(door.calls), KioskController(desk.calls)
        ringer = Ringer(desk_kiosk, desk.devices)
        await door_kiosk.call("desk")
        await desk_kiosk.wait_for_phase(Phase.RINGING_IN, timeout=10)
        await asyncio.sleep(0.6)
        (speaker,) = desk.devices.opened_speakers
        assert speaker.device.audio_mode == "SPEAKER" and speaker.frames_written >= 20  # 20 ms frames, paced
        await desk_kiosk.answer()
        await desk_kiosk.wait_for_phase(Phase.IN_CALL, timeout=10)
        rung = ringer.periods_played
        await asyncio.sleep(0.3)
        assert ringer.periods_played == rung, "the ring stops when the call is answered"
        assert speaker.frames_written == rung
        ringer.close()
        await door_kiosk.hang_up()
