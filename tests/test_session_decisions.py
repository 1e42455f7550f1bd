"""A call session's decisions, one by one, on fakes (tests/session_fakes.py): no network, no aiortc,
a clock the test moves. The end-to-end tests reach these only by chance (a network loss at the right
moment); here each is made to happen.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from session_fakes import FakeFeed, FakePeer, Scene, settle, start_scene, user

from kiosk.calls.liveness import SIGNALING_REFRESH_AFTER, SIGNALING_REFRESH_INTERVAL
from kiosk.calls.media import (
    MEDIA_STALL_SECONDS,
    MEDIA_START_SECONDS,
    OFFER_ANSWER_SECONDS,
    REBUILD_INTERVAL_SECONDS,
)
from kiosk.calls.ports import SessionOver
from kiosk.calls.settings import CallSettingsBuilder

ROOM = {"url": "http://janus.invalid/janus", "room": 1234, "pin": "p"}


# ----------------------------------------------------------------------------- joining and glare


async def test_the_one_who_joins_offers_to_those_already_there(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "carol", ["alice", "bob"])
    offers = scene.sent.of("offer")
    assert sorted(o.fields["to"] for o in offers) == ["alice", "bob"]
    assert all(o.fields["negotiationId"] == scene.peer_of(o.fields["to"]).negotiation_id for o in offers)
    await scene.session.close(notify_server=False)


async def test_glare_the_smaller_uids_offer_wins_and_the_other_is_dropped(tmp_path: Path) -> None:
    # alice (smaller) offered to bob; bob's own offer crosses it: alice ignores bob's.
    scene = await start_scene(tmp_path, "alice", ["bob"])
    ours = scene.peer_of("bob")
    assert ours.signaling_state == "have-local-offer"
    scene.message(type="offer", **{"from": "bob"}, sdp="bob's offer", negotiationId="b1")
    await settle()
    assert scene.sent.of("answer") == []
    assert scene.peer_of("bob") is ours and not ours.closed and ours.remote_sdps == []
    await scene.session.close(notify_server=False)


async def test_glare_the_larger_uid_answers_the_smaller_uids_offer(tmp_path: Path) -> None:
    # bob (larger) offered to alice as alice offered to him: bob drops his and answers hers.
    scene = await start_scene(tmp_path, "bob", ["alice"])
    ours = scene.peer_of("alice")
    scene.message(type="offer", **{"from": "alice"}, sdp="alice's offer", negotiationId="a1")
    await settle()
    (answer,) = scene.sent.of("answer")
    assert answer.fields["to"] == "alice" and answer.fields["negotiationId"] == "a1"
    answering = scene.peer_of("alice")
    assert answering is not ours and ours.closed and answering.remote_sdps == ["alice's offer"]
    await scene.session.close(notify_server=False)


async def test_only_the_newest_of_offers_queued_behind_a_dead_connection_is_answered(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "bob", [])
    scene.message(type="participant.joined", participant=user("alice"))
    for n in (1, 2, 3):
        scene.message(type="offer", **{"from": "alice"}, sdp=f"offer {n}", negotiationId=f"a{n}")
    await settle()
    (answer,) = scene.sent.of("answer")
    assert answer.fields["negotiationId"] == "a3"
    assert len(scene.peers) == 1  # the older ones were not even given a connection
    await scene.session.close(notify_server=False)


async def test_an_offer_that_replaces_one_being_answered_raises_no_error(tmp_path: Path) -> None:
    # The first offer's connection is closed (replaced) while its answer is being made.
    scene = await start_scene(tmp_path, "bob", [])
    scene.message(type="participant.joined", participant=user("alice"))
    scene.message(type="offer", **{"from": "alice"}, sdp="offer 1", negotiationId="a1")
    await asyncio.sleep(0)  # the first answer has started
    scene.message(type="offer", **{"from": "alice"}, sdp="offer 2", negotiationId="a2")
    await settle()
    assert [a.fields["negotiationId"] for a in scene.sent.of("answer")] == ["a2"]
    assert scene.host.log.of("on_error") == []
    await scene.session.close(notify_server=False)


async def test_trickled_candidates_go_to_the_answering_connection_after_its_offer(tmp_path: Path) -> None:
    # A browser sends its offer, then its candidates one by one, then null (the end of them).
    scene = await start_scene(tmp_path, "bob", [])
    scene.message(type="participant.joined", participant=user("alice"))
    first = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.2 50000 typ host", "sdpMid": "0"}
    scene.message(type="offer", **{"from": "alice"}, sdp="alice's offer", negotiationId="a1")
    scene.message(type="candidate", **{"from": "alice"}, candidate=first)
    scene.message(type="candidate", **{"from": "alice"}, candidate=None)
    scene.message(type="candidate", **{"from": "carol"}, candidate=first)  # no connection: dropped
    await settle()
    peer = scene.peer_of("alice")
    assert peer.applied == [("offer", "alice's offer"), ("candidate", first), ("candidate", None)]
    assert len(scene.peers) == 1
    await scene.session.close(notify_server=False)


# ----------------------------------------------------------------------------- answers


async def test_an_answer_to_an_older_offer_is_never_applied(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    first = scene.peer_of("bob")
    first.media_arrives()
    scene.clock.advance(MEDIA_STALL_SECONDS + 0.1)  # bob's media stopped: alice rebuilds
    scene.session.watch.check()
    await settle()
    second = scene.peer_of("bob")
    assert second is not first and len(scene.sent.of("offer")) == 2
    # bob's answer to the first offer arrives late: the new connection must not take it.
    scene.message(type="answer", **{"from": "bob"}, sdp="answer to n1", negotiationId=first.negotiation_id)
    await settle()
    assert second.answers_applied == [] and second.signaling_state == "have-local-offer"
    scene.message(type="answer", **{"from": "bob"}, sdp="answer to n2", negotiationId=second.negotiation_id)
    await settle()
    assert second.answers_applied == ["answer to n2"]
    await scene.session.close(notify_server=False)


# ----------------------------------------------------------------------------- rebuilds


async def test_a_broken_connection_is_rebuilt_by_the_smaller_uid_at_most_once_per_interval(
    tmp_path: Path,
) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    peer = scene.peer_of("bob")
    scene.message(type="answer", **{"from": "bob"}, sdp="answer", negotiationId=peer.negotiation_id)
    await settle()
    peer.media_arrives()
    scene.clock.advance(1.0)
    scene.session.watch.check()
    assert len(scene.sent.of("offer")) == 1  # media is flowing
    scene.clock.advance(MEDIA_STALL_SECONDS)
    scene.session.watch.check()
    await settle()
    assert len(scene.sent.of("offer")) == 2  # stopped: rebuilt
    rebuilt = scene.peer_of("bob")
    assert rebuilt is not peer and not peer.closed  # kept until the new one brings media
    # Its offer is in flight and the interval has not passed: nothing more.
    scene.clock.advance(OFFER_ANSWER_SECONDS / 2)
    scene.session.watch.check()
    await settle()
    assert len(scene.sent.of("offer")) == 2
    # Answered, but no media yet; bob is announced again (not back from a loss): within the
    # interval nothing is rebuilt, after it the connection that brought nothing is.
    scene.message(type="answer", **{"from": "bob"}, sdp="answer", negotiationId=rebuilt.negotiation_id)
    await settle()
    scene.message(type="participant.joined", participant=user("bob"))
    await settle()
    assert len(scene.sent.of("offer")) == 2
    scene.clock.advance(REBUILD_INTERVAL_SECONDS)
    scene.message(type="participant.joined", participant=user("bob"))
    await settle()
    assert len(scene.sent.of("offer")) == 3
    await scene.session.close(notify_server=False)


async def _rebuilt_after_a_stall(scene: Scene, uid: str) -> tuple[FakePeer, FakePeer]:
    old = scene.peer_of(uid)
    scene.message(type="answer", **{"from": uid}, sdp="answer", negotiationId=old.negotiation_id)
    await settle()
    old.media_arrives()
    scene.clock.advance(MEDIA_STALL_SECONDS + 0.1)  # a blackout
    scene.session.watch.check()
    await settle()
    new = scene.peer_of(uid)
    assert new is not old and not old.closed
    return old, new


async def _media_flows(scene: Scene, link: FakePeer, seconds: float) -> None:
    """`link` brings media every half second for `seconds`, the watch looking each time."""
    for _ in range(round(seconds / 0.5)):
        scene.clock.advance(0.5)
        link.media_arrives()
        scene.session.watch.check()
        await settle()


async def _answered(scene: Scene, uid: str, negotiation: str = "a1", sdp: str = "offer") -> FakePeer:
    """`uid` (the smaller uid) joins and offers: the connection that answers it."""
    scene.message(type="participant.joined", participant=user(uid))
    scene.message(type="offer", **{"from": uid}, sdp=sdp, negotiationId=negotiation)
    await settle()
    return scene.peer_of(uid)


async def test_make_before_break_the_old_connection_closes_once_the_new_one_brings_media(
    tmp_path: Path,
) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    old, new = await _rebuilt_after_a_stall(scene, "bob")
    scene.clock.advance(0.5)
    scene.session.watch.check()
    await settle()
    assert not old.closed  # the new one has brought nothing yet
    new.media_arrives()
    scene.session.watch.check()
    await settle()
    assert old.closed and scene.peer_of("bob") is new and not new.closed
    await scene.session.close(notify_server=False)


async def test_media_back_on_the_old_connection_first_drops_the_new_one(tmp_path: Path) -> None:
    """A 2 s blackout: the path comes back and the old connection's media with it, before the new
    connection (its offer delayed behind the signaling's own retransmissions) has connected."""
    scene = await start_scene(tmp_path, "alice", ["bob"])
    old, new = await _rebuilt_after_a_stall(scene, "bob")
    scene.clock.advance(0.4)
    old.media_arrives()
    scene.session.watch.check()
    await settle()
    assert scene.peer_of("bob") is old and new.closed and not old.closed
    # Media flows: nothing more is rebuilt.
    offers = len(scene.sent.of("offer"))
    await _media_flows(scene, old, 5.0)
    assert len(scene.sent.of("offer")) == offers
    await scene.session.close(notify_server=False)


async def test_the_answerer_keeps_its_old_connection_too_and_goes_back_to_it(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "bob", [])
    old = await _answered(scene, "alice", sdp="offer 1")
    old.media_arrives()
    scene.clock.advance(MEDIA_STALL_SECONDS + 0.1)
    scene.message(type="offer", **{"from": "alice"}, sdp="offer 2", negotiationId="a2")  # alice rebuilds
    await settle()
    new = scene.peer_of("alice")
    assert new is not old and not old.closed and len(scene.sent.of("answer")) == 2
    # The old connection's media comes back; alice (the offerer) drops the new one, so it never
    # connects here: bob goes back to the old one once the new one has had its time.
    old.media_arrives()
    scene.session.watch.check()
    await settle()
    assert scene.peer_of("alice") is new and not old.closed
    await _media_flows(scene, old, MEDIA_START_SECONDS + 0.5)
    assert scene.peer_of("alice") is old and new.closed and not old.closed
    await scene.session.close(notify_server=False)


async def test_a_connection_that_never_carried_media_is_not_kept(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    first = scene.peer_of("bob")  # offered, never answered, no media
    scene.clock.advance(OFFER_ANSWER_SECONDS + REBUILD_INTERVAL_SECONDS)
    scene.message(type="participant.joined", participant=user("bob"), rejoined=True)
    await settle()
    assert scene.peer_of("bob") is not first and first.closed
    await scene.session.close(notify_server=False)


async def test_the_larger_uid_never_rebuilds(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "bob", [])
    peer = await _answered(scene, "alice")
    peer.media_arrives()
    scene.clock.advance(10)
    scene.session.watch.check()
    await settle()
    assert scene.sent.of("offer") == [] and scene.peer_of("alice") is peer
    await scene.session.close(notify_server=False)


async def test_a_participant_back_is_offered_to_at_once_even_with_an_offer_in_flight(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    scene.peer_of("bob").media_arrives()
    scene.clock.advance(MEDIA_STALL_SECONDS + 0.1)
    scene.session.watch.check()
    await settle()
    assert len(scene.sent.of("offer")) == 2  # rebuilt; that offer went to bob's dead connection
    scene.clock.advance(0.2)  # well within the rebuild interval and the answer's allowance
    scene.message(type="participant.joined", participant=user("bob"), rejoined=True)
    await settle()
    assert len(scene.sent.of("offer")) == 3
    assert REBUILD_INTERVAL_SECONDS > 0.3  # (the premise: it came back before another rebuild was due)
    await scene.session.close(notify_server=False)


async def test_no_media_from_anyone_renews_the_signaling_connection(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    scene.peer_of("bob").media_arrives()
    scene.clock.advance(2.0)
    scene.session.watch.check()
    assert scene.host.refreshed == 0
    scene.clock.advance(1.5)
    scene.session.watch.check()
    assert scene.host.refreshed == 1
    scene.clock.advance(1.0)
    scene.session.watch.check()
    assert scene.host.refreshed == 1  # not again before the refresh interval
    await scene.session.close(notify_server=False)


async def test_a_signaling_connection_made_after_the_media_stopped_is_not_renewed_at_once(
    tmp_path: Path,
) -> None:
    # The network came back: the renewed connection is how the rebuilt peer connections get
    # negotiated. Dropping it because the media has not come back yet loses the offers and answers
    # on it and puts the recovery back by a reconnect (bench/recovery.py: 2.3 s instead of 0.3 s).
    scene = await start_scene(tmp_path, "alice", ["bob"])
    channel = scene.sent
    scene.peer_of("bob").media_arrives()
    scene.clock.advance(SIGNALING_REFRESH_AFTER + 0.5)
    scene.session.watch.check()
    assert scene.host.refreshed == 1  # everyone silent: the old connection may be dead
    channel.connected = False  # reconnecting, while the network is down
    scene.clock.advance(SIGNALING_REFRESH_INTERVAL - 0.2)
    scene.session.watch.check()
    channel.connected, channel.generation = True, channel.generation + 1  # the network is back
    scene.session.watch.check()
    scene.clock.advance(0.4)  # a renewal would be due by the interval, and media is still silent
    scene.session.watch.check()
    assert scene.host.refreshed == 1
    # A new connection that stays silent as long as an old one would is renewed as that one was.
    scene.clock.advance(SIGNALING_REFRESH_AFTER)
    scene.session.watch.check()
    assert scene.host.refreshed == 2
    await scene.session.close(notify_server=False)


async def test_an_unanswered_ping_renews_the_signaling_connection(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    await scene.session.probe.probe()
    assert scene.host.refreshed == 0
    scene.sent.fail_pings = True
    await scene.session.probe.probe()
    assert scene.host.refreshed == 1
    await scene.session.close(notify_server=False)


# ----------------------------------------------------------------------------- the SFU


async def test_the_switch_to_the_sfu_keeps_mesh_media_until_the_feed_replaces_it(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"])
    mesh_peer = scene.peer_of("bob")
    scene.message(type="session.media", media={"mode": "sfu", "sfu": ROOM})
    await settle()
    assert scene.session.info.media_mode == "sfu"
    (publisher,) = scene.publishers
    assert scene.session.media.peers["bob"] is mesh_peer and not mesh_peer.closed  # make before break
    publisher.publishers[7] = "bob"
    scene.session.watch.check()  # the tick subscribes to every publisher with no feed here
    await settle()
    feed = scene.session.media.peers["bob"]
    assert isinstance(feed, FakeFeed) and feed.feed == 7 and mesh_peer.closed
    # A late mesh offer is a negotiation overtaken by the switch: ignored.
    scene.message(type="offer", **{"from": "bob"}, sdp="offer", negotiationId="b9")
    await settle()
    assert scene.sent.of("answer") == []
    await scene.session.close(notify_server=False)


async def test_a_feed_whose_subscription_failed_is_subscribed_again(tmp_path: Path) -> None:
    scene = await start_scene(tmp_path, "alice", ["bob"], media={"mode": "sfu", "sfu": ROOM})
    (publisher,) = scene.publishers
    publisher.failures = 1
    publisher.publishers[7] = "bob"
    scene.session.watch.check()
    await settle()
    assert publisher.subscriptions == [7] and "bob" not in scene.session.media.peers
    scene.session.watch.check()  # within the interval: not yet
    await settle()
    assert publisher.subscriptions == [7]
    scene.clock.advance(REBUILD_INTERVAL_SECONDS)
    scene.session.watch.check()
    await settle()
    assert publisher.subscriptions == [7, 7] and isinstance(scene.session.media.peers["bob"], FakeFeed)
    # Its media then stops: subscribed again.
    feed = scene.session.media.peers["bob"]
    assert isinstance(feed, FakeFeed)
    feed.media_arrives()
    scene.clock.advance(REBUILD_INTERVAL_SECONDS + MEDIA_STALL_SECONDS)
    scene.session.watch.check()
    await settle()
    assert publisher.subscriptions == [7, 7, 7] and scene.session.media.peers["bob"] is not feed
    await scene.session.close(notify_server=False)


async def test_a_room_janus_lost_is_reported_to_the_server_once(tmp_path: Path) -> None:
    from kiosk.calls.sfu import ERROR_NO_SUCH_ROOM, SfuError

    scene = await start_scene(tmp_path, "alice", ["bob"])
    scene.refuse_publishing = SfuError("No such room", ERROR_NO_SUCH_ROOM)
    scene.message(type="session.media", media={"mode": "sfu", "sfu": ROOM})
    await settle()
    (lost,) = scene.sent.of("sfu.lost")
    assert lost.fields == {"sessionId": "s1", "room": 1234}
    (error,) = scene.host.log.of("on_error")
    assert error[0].code == "SFU_UNAVAILABLE"
    await scene.session.close(notify_server=False)


# ----------------------------------------------------------------------------- the session's end


async def test_alone_for_the_idle_period_the_session_says_it_is_over(tmp_path: Path) -> None:
    settings = CallSettingsBuilder().set_idle_timeout_period(1).build()
    scene = await start_scene(tmp_path, "alice", ["bob"], settings=settings)
    scene.message(type="participant.left", participant=user("bob"))
    await settle()
    assert scene.session.idle.counting
    await __import__("asyncio").sleep(1.2)
    assert scene.host.log.of("on_session_timeout_warning") == [(1,)]
    assert scene.over == [SessionOver.TIMEOUT]
    await scene.session.close(notify_server=False)


async def test_someone_joining_stops_the_idle_count_and_stay_starts_it_over(tmp_path: Path) -> None:
    settings = CallSettingsBuilder().set_idle_timeout_period(600).build()
    scene = await start_scene(tmp_path, "alice", [], settings=settings)
    assert scene.session.idle.counting  # alone from the start
    scene.message(type="participant.joined", participant=user("bob"))
    assert not scene.session.idle.counting
    scene.message(type="participant.left", participant=user("bob"))
    assert scene.session.idle.counting
    scene.session.info.stay()
    assert scene.session.idle.counting and scene.over == []
    await scene.session.close(notify_server=False)


# ----------------------------------------------------------------------------- the view


def test_a_view_is_checked_when_it_is_given_not_mid_call() -> None:
    import av
    import pytest

    from kiosk.calls.ports import as_call_view

    class Frames:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def render_frame(self, uid: str, frame: av.VideoFrame) -> None:
            self.seen.append(uid)

    frames = Frames()
    view = as_call_view(frames)
    view.render_frame("bob", av.VideoFrame(16, 16, "yuv420p"))
    view.set_mode("SPOTLIGHT")  # type: ignore[arg-type]  # a hook it lacks: nothing happens
    assert frames.seen == ["bob"]

    class WrongArity:
        def render_frame(self, frame: av.VideoFrame) -> None: ...

    class NotCallable:
        close = "later"

    with pytest.raises(TypeError, match="view.render_frame must take 2 argument"):
        as_call_view(WrongArity())
    with pytest.raises(TypeError, match="view.close must be callable"):
        as_call_view(NotCallable())

    class Failing:
        def remove_participant(self, uid: str) -> None:
            raise RuntimeError("the screen is gone")

    as_call_view(Failing()).remove_participant("bob")  # logged, never raised into the call


async def test_a_feed_that_never_brings_media_is_given_longer_each_time(tmp_path: Path) -> None:
    from kiosk.calls.media import MEDIA_START_SECONDS

    scene = await start_scene(tmp_path, "alice", ["bob"], media={"mode": "sfu", "sfu": ROOM})
    (publisher,) = scene.publishers
    publisher.publishers[7] = "bob"
    scene.session.watch.check()
    await settle()
    first = scene.session.media.peers["bob"]
    assert isinstance(first, FakeFeed)
    first.media_arrives()  # bob's media flowed once (a participant whose media never flowed is left be)
    scene.session.watch.check()
    first.last_media_at = None  # (as a new feed: it must bring media by itself from now on)
    allowances = []
    for _ in range(4):
        feed = scene.session.media.peers["bob"]
        assert isinstance(feed, FakeFeed)
        waited = 0.0
        while scene.session.media.peers["bob"] is feed:
            scene.clock.advance(0.5)
            waited += 0.5
            scene.session.watch.check()
            await settle()
            assert waited < 60, "never subscribed again"
        allowances.append(waited)
    # 3 s, then 6, then 12, then no more than 12 (each counted from the new feed's start).
    assert allowances[0] <= MEDIA_START_SECONDS + 0.5 < allowances[1] <= 2 * MEDIA_START_SECONDS + 0.5
    assert 2 * MEDIA_START_SECONDS + 0.5 < allowances[2] <= 4 * MEDIA_START_SECONDS + 0.5
    assert allowances[3] == allowances[2]
    await scene.session.close(notify_server=False)
