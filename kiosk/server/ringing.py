"""Ringing: calls from one user to another (or to a ring group: every member rings, the first to
answer takes the call), their status changes, and the call log."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from kiosk.protocol import CallStatus, CallType, CallUpdatedMessage, ErrorCode, ProtocolError
from kiosk.server.clock import now_ms
from kiosk.server.config import ServerConfig
from kiosk.server.connections import Hub
from kiosk.server.models import CallRecord, User
from kiosk.server.sessions import Sessions
from kiosk.server.state import LiveState
from kiosk.server.storage import Direction, Storage

log = logging.getLogger(__name__)

# How many times a status change is retried when another change of the same call won the race.
_MAX_ATTEMPTS = 5
# close_overdue_calls: how long after its timers should have fired a call counts as abandoned.
_OVERDUE_MARGIN_SECONDS = 15.0


@dataclass
class Change:
    """What one transition writes; None fields stay as they are."""

    status: CallStatus
    joined_at: int | None = None
    ended_at: int | None = None
    duration_seconds: int | None = None
    answered_by: str | None = None


@dataclass
class CallLogQuery:
    type: CallType | None = None
    status: CallStatus | None = None
    direction: Direction | None = None
    has_recording: bool | None = None
    page: int = 1
    per_page: int = 20


def _final(call: CallRecord, status: CallStatus) -> Change:
    ended = now_ms()
    duration = max(0, (ended - call.joined_at) // 1000) if call.joined_at is not None else 0
    return Change(status=status, ended_at=ended, duration_seconds=duration)


def _require_initiated(call: CallRecord) -> None:
    if call.status != CallStatus.INITIATED:
        raise ProtocolError(ErrorCode.INVALID_STATE, f"call {call.session_id} is {call.status}")


def _require_party(call: CallRecord, user: User, members: Collection[str] = ()) -> None:
    """The caller or the receiver; of a ring group's call, also a member it rang (`members`)."""
    if not call.is_party(user.uid) and user.uid not in members:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{user.uid} is not a party to call {call.session_id}")


class Ringing:
    """The ringing flow on the server: a call from one user to another (`CallRecord`), its status
    changes (accept, reject, end, the ring timeout and join deadline), and the call log."""

    def __init__(
        self, config: ServerConfig, storage: Storage, state: LiveState, hub: Hub, sessions: Sessions
    ) -> None:
        self._config = config
        self._storage = storage
        self._state = state
        self._hub = hub
        self._sessions = sessions
        self._timers: dict[str, asyncio.Task[None]] = {}
        sessions.on_session_over = self.on_session_over

    # --- requests ---

    async def create(self, caller: User, receiver_uid: str, call_type: CallType) -> CallRecord:
        if receiver_uid == caller.uid:
            raise ProtocolError(ErrorCode.FORBIDDEN, "a user cannot call itself")
        receiver = await self._storage.get_user(receiver_uid)
        if receiver is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no user {receiver_uid}")
        group = await self._storage.group_members(receiver_uid)
        members = [m.uid for m in group or [] if m.uid != caller.uid]
        if group is not None and not members:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"nobody is in {receiver.name} to ring")
        session_id = f"c-{uuid.uuid4().hex}"
        now = now_ms()
        # Busy check and reservation in one step, so two callers cannot both get through.
        ringing = await self._state.reserve_call(session_id, caller.uid, receiver.uid)
        call = CallRecord(
            session_id=session_id,
            type=call_type,
            status=CallStatus.INITIATED if ringing else CallStatus.BUSY,
            initiator=caller,
            receiver=receiver,
            initiated_at=now,
            ended_at=None if ringing else now,
            group=group is not None,
        )
        try:
            await self._storage.create_call(call)
            if members:
                await self._storage.add_call_members(session_id, members)
        except BaseException:
            if ringing:
                await self._state.release_call(session_id)
            raise
        log.info("call %s: %s -> %s (%s) %s", session_id, caller.uid, receiver.uid, call_type, call.status)
        if ringing:
            self._timers[session_id] = asyncio.create_task(self._ring_timeout(session_id))
            # A ring group rings every member, on every device each is signed in on.
            for uid in members or [receiver.uid]:
                await self._hub.push_to_user(uid, {"type": "call.incoming", "call": call.to_json()})
        return call

    async def get(self, user: User, session_id: str) -> CallRecord:
        call = await self._storage.get_call(session_id)
        if call is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no call {session_id}")
        _require_party(call, user, await self._members(call))
        return call

    async def _members(self, call: CallRecord) -> dict[str, str | None]:
        """The members a ring group's call rang (with how each declined); empty for a 1:1 call."""
        return await self._storage.call_members(call.session_id) if call.group else {}

    async def accept(self, user: User, session_id: str) -> CallRecord:
        current = await self._storage.get_call(session_id)
        members = await self._members(current) if current is not None else {}

        def decide(call: CallRecord) -> Change:
            if call.group:
                # Any member it rang may take it; the compare-and-set lets only the first one win.
                _require_party(call, user, members)
                if user.uid not in members:
                    raise ProtocolError(
                        ErrorCode.FORBIDDEN, "only a member it rang may accept a group's call"
                    )
                _require_initiated(call)
                return Change(status=CallStatus.ONGOING, joined_at=now_ms(), answered_by=user.uid)
            _require_party(call, user)
            if user.uid != call.receiver.uid:
                raise ProtocolError(ErrorCode.FORBIDDEN, "only the receiver may accept a call")
            _require_initiated(call)
            return Change(status=CallStatus.ONGOING, joined_at=now_ms())

        call = await self._change(session_id, decide)
        self._timers[session_id] = asyncio.create_task(self._join_deadline(session_id))
        return call

    async def reject(self, user: User, session_id: str, status: CallStatus) -> CallRecord:
        current = await self._storage.get_call(session_id)
        if current is not None and current.group and user.uid != current.initiator.uid:
            return await self._member_declines(user, current, status)

        def decide(call: CallRecord) -> Change:
            _require_party(call, user)
            allowed = (
                {CallStatus.REJECTED, CallStatus.BUSY}
                if user.uid == call.receiver.uid
                else {CallStatus.CANCELLED}
            )
            if status not in allowed:
                role = "receiver" if user.uid == call.receiver.uid else "initiator"
                raise ProtocolError(ErrorCode.FORBIDDEN, f"the {role} may not set status {status}")
            _require_initiated(call)
            return _final(call, status)

        return await self._change(session_id, decide)

    async def _member_declines(self, user: User, call: CallRecord, status: CallStatus) -> CallRecord:
        """A member of a ring group declines (or is busy): the others go on ringing; when every
        member has declined, the call is over (busy if all were busy, else rejected)."""
        members = await self._members(call)
        _require_party(call, user, members)
        if status not in (CallStatus.REJECTED, CallStatus.BUSY):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"a member may not set status {status}")
        _require_initiated(call)
        members = await self._storage.decline_call_member(call.session_id, user.uid, status)
        log.info("call %s: %s declined (%s)", call.session_id, user.uid, status)
        if any(answer is None for answer in members.values()):
            return call
        everyone_busy = all(answer == str(CallStatus.BUSY) for answer in members.values())

        def decide(current: CallRecord) -> Change:
            _require_initiated(current)
            return _final(current, CallStatus.BUSY if everyone_busy else CallStatus.REJECTED)

        return await self._change(call.session_id, decide)

    async def end(self, user: User, session_id: str) -> CallRecord:
        def decide(call: CallRecord) -> Change:
            _require_party(call, user)
            if call.status == CallStatus.INITIATED and user.uid == call.initiator.uid:
                return _final(call, CallStatus.CANCELLED)
            if call.status in (CallStatus.INITIATED, CallStatus.ONGOING):
                return _final(call, CallStatus.ENDED)
            raise ProtocolError(ErrorCode.INVALID_STATE, f"call {call.session_id} is {call.status}")

        call = await self._change(session_id, decide)
        await self._sessions.end(session_id, user)
        return call

    async def call_log(self, user: User, query: CallLogQuery) -> tuple[list[CallRecord], int]:
        return await self._storage.list_calls(
            user.uid,
            type=query.type,
            status=query.status,
            direction=query.direction,
            has_recording=query.has_recording,
            page=query.page,
            per_page=query.per_page,
        )

    # --- events ---

    async def on_session_over(self, session_id: str, by: User | None) -> None:
        """The call's live session is over (hangup, disconnect, end, or emptied): an ongoing call ends."""

        def decide(call: CallRecord) -> Change:
            if call.status != CallStatus.ONGOING:
                raise ProtocolError(ErrorCode.INVALID_STATE, "not ongoing")
            return _final(call, CallStatus.ENDED)

        if await self._storage.get_call(session_id) is None:
            return  # a direct session
        try:
            await self._change(session_id, decide)
        except ProtocolError:
            pass  # already final, or still ringing: the session ending does not decide the call

    async def _ring_timeout(self, session_id: str) -> None:
        await asyncio.sleep(self._config.ring_timeout)

        def decide(call: CallRecord) -> Change:
            _require_initiated(call)
            return _final(call, CallStatus.UNANSWERED)

        try:
            await self._change(session_id, decide)
        except ProtocolError:
            pass  # answered or ended meanwhile
        except Exception:
            log.exception("ring timeout of call %s failed", session_id)
        finally:
            self._timers.pop(session_id, None)

    async def _join_deadline(self, session_id: str) -> None:
        """An accepted call that nobody joins (the app crashed after accepting) must not leave both
        users busy for ever: after the ring timeout with an empty session, it ends."""
        await asyncio.sleep(self._config.ring_timeout)
        session = await self._state.get_session(session_id)
        if session is not None and session.participants:
            self._timers.pop(session_id, None)
            return

        def decide(call: CallRecord) -> Change:
            if call.status != CallStatus.ONGOING:
                raise ProtocolError(ErrorCode.INVALID_STATE, "not ongoing")
            return _final(call, CallStatus.ENDED)

        try:
            await self._change(session_id, decide)
        except ProtocolError:
            pass  # ended meanwhile
        except Exception:
            log.exception("join deadline of call %s failed", session_id)
        finally:
            self._timers.pop(session_id, None)

    async def close_stale_calls(self) -> None:
        """At start, with state that did not survive the restart: calls left ringing by the previous
        run can never be answered, so they become unanswered. Calls left ongoing get the join
        deadline an accepted call gets: their parties rejoin (the SDK and the browser client do, on
        their own) and the call goes on; if nobody is back in its session by then, it ends."""
        stale = await self._storage.calls_with_status([CallStatus.INITIATED, CallStatus.ONGOING])

        def decide(call: CallRecord) -> Change:
            if call.status == CallStatus.INITIATED:
                return _final(call, CallStatus.UNANSWERED)
            raise ProtocolError(ErrorCode.INVALID_STATE, "not ringing")

        for call in stale:
            if call.status == CallStatus.ONGOING:
                self._timers[call.session_id] = asyncio.create_task(self._join_deadline(call.session_id))
                continue
            try:
                await self._change(call.session_id, decide, notify=False)
            except ProtocolError:
                pass
        if stale:
            log.info(
                "%d call(s) left open by the previous run: ringing ones closed, ongoing ones wait for their parties",
                len(stale),
            )

    async def close_overdue_calls(self) -> None:
        """With several server processes: a call's ring timer and join deadline run in the process
        that started them, and die with it. Any process may close such a call once both would have
        fired, with a margin (compare-and-set, so a timer that did fire is never undone):
        still ringing -> unanswered; accepted but nobody in its session -> ended."""
        overdue_ms = int((self._config.ring_timeout + _OVERDUE_MARGIN_SECONDS) * 1000)
        now = now_ms()
        for call in await self._storage.calls_with_status([CallStatus.INITIATED, CallStatus.ONGOING]):
            if call.status == CallStatus.INITIATED:
                if now - call.initiated_at < overdue_ms:
                    continue
            elif call.joined_at is None or now - call.joined_at < overdue_ms:
                continue
            else:
                session = await self._state.get_session(call.session_id)
                if session is not None and session.participants:
                    continue

            def decide(current: CallRecord, seen: CallStatus = call.status) -> Change:
                if current.status != seen:
                    raise ProtocolError(ErrorCode.INVALID_STATE, "changed meanwhile")
                return _final(
                    current, CallStatus.UNANSWERED if seen == CallStatus.INITIATED else CallStatus.ENDED
                )

            try:
                await self._change(call.session_id, decide)
                log.info("call %s was left open by a server process that is gone: closed", call.session_id)
            except ProtocolError:
                pass

    async def close(self) -> None:
        timers = list(self._timers.values())
        for task in timers:
            task.cancel()
        await asyncio.gather(*timers, return_exceptions=True)
        self._timers.clear()

    # --- internals ---

    async def _change(
        self, session_id: str, decide: Callable[[CallRecord], Change], *, notify: bool = True
    ) -> CallRecord:
        """Apply `decide` to the current call and store it only if nobody changed the call meanwhile
        (compare-and-set on the status); then push `call.updated` to both parties."""
        for _ in range(_MAX_ATTEMPTS):
            call = await self._storage.get_call(session_id)
            if call is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no call {session_id}")
            change = decide(call)
            updated = await self._storage.update_call(
                session_id,
                if_status=[call.status],
                status=change.status,
                joined_at=change.joined_at,
                ended_at=change.ended_at,
                duration_seconds=change.duration_seconds,
                answered_by=change.answered_by,
            )
            if updated is not None:
                break
        else:
            raise ProtocolError(ErrorCode.INVALID_STATE, f"call {session_id} keeps changing; try again")
        log.info("call %s: %s -> %s", session_id, call.status, updated.status)
        if updated.status != CallStatus.INITIATED:
            # Answered or over: stop ringing (unless this is the ring timer itself finishing).
            timer = self._timers.pop(session_id, None)
            if timer is not None and timer is not asyncio.current_task():
                timer.cancel()
        if updated.is_final:
            await self._state.release_call(session_id)
        if notify:
            message: CallUpdatedMessage = {"type": "call.updated", "call": updated.to_json()}
            await self._hub.push_to_user(updated.initiator.uid, message)
            # A ring group's members all hear of it: answered (by one of them: the others stop
            # ringing, "answered elsewhere"), or over.
            for uid in await self._members(updated) or [updated.receiver.uid]:
                await self._hub.push_to_user(uid, message)
        return updated
