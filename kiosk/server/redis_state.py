"""Live state in Redis, shared by several server processes (`kiosk server --redis URL`).

`RedisState` is the `LiveState` of docs/scale-out.md: presence, live sessions and their participants,
and the calls in progress live in one Redis, so every process sees every other's. It also carries the
two things only a multi-process server needs:

- delivery to connections held by other processes: each process (a "node") subscribes to its own
  pub/sub channel, and `Hub` publishes there a message for a connection whose id names that node
  (connection ids are "<node id>.<random hex>", see `Hub.add`);
- the end of a node that died: each node refreshes a heartbeat key with a TTL. A node whose key
  expired (killed) or was deleted (stopped) is claimed by the first live node that notices; its
  connections leave the presence at once, and its participants become "orphans" with a deadline one
  rejoin grace away. Whoever is still an orphan at the deadline leaves its session (reason
  disconnected) unless it rejoined meanwhile (on any node), exactly as the in-process grace timer
  of `Sessions.disconnected` does for a connection that merely closed.

Atomicity: every method that reads and then writes runs as one optimistic transaction (WATCH the
keys read, MULTI/EXEC the writes, retry if another process changed them), or as one Lua script where
the keys to touch are only known inside Redis. The scripts build some key names themselves, so this
needs a single Redis (or a primary with replicas), not Redis Cluster.

Keys, all under the prefix (default "kiosk:"):
  online                  set of uids with at least one connection
  conns:<uid>             set of the user's connection ids
  session:<sid>           JSON: type, audioOnly, participants in join order
  joined:<conn>           list of the session ids this connection is in
  user-sessions:<uid>     set of the sessions the user is in (the busy check)
  call:<sid>              JSON [initiator, receiver] of a call in progress (expires, see below)
  user-calls:<uid>        set of the calls in progress the user is a party to
  nodes                   set of node ids that have not been claimed
  node:<node>:alive       heartbeat, with a TTL
  node:<node>:conns       "<conn> <uid>" of the node's authenticated connections
  node:<node>:members     "<conn> <sid>" of the node's connections' participants
  orphans                 sorted set "<conn> <sid>" by the deadline (ms) at which they leave
  deliver:<node>          the node's pub/sub channel
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import RedisError, WatchError

from kiosk.protocol import ErrorCode, ProtocolError, ServerMessage, SessionType
from kiosk.server.connections import node_of
from kiosk.server.models import User
from kiosk.server.state import LeaveOutcome, LiveState, Participant, Session

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "kiosk:"
# A node refreshes its heartbeat this often; it counts as dead once the key is this old.
HEARTBEAT_SECONDS = 1.5
NODE_TTL_SECONDS = 6.0
# A call reservation outlives ringing plus the wait for the first join by this much; after that the
# parties are busy through their session membership. A reservation a dead node left expires so.
_RESERVATION_MARGIN_SECONDS = 60.0
# The `periodic` work runs every this many heartbeats.
_PERIODIC_EVERY = 4


def _strings(reply: Iterable[object]) -> list[str]:
    """A reply's strings as what they are. This client decodes every reply (decode_responses=True),
    but redis-py types them `bytes | str` whatever the client (and zrange's as if scores came too)."""
    return cast(list[str], list(reply))


def _string(reply: object) -> str:
    """One string reply (see _strings)."""
    return cast(str, reply)


# Delivers a message to some of this node's connections.
Deliver = Callable[[list[str], ServerMessage], None]
# Removes an orphaned participant: (session id, connection id).
LeaveOrphan = Callable[[str, str], Awaitable[None]]

_REMOVE_CONNECTION = """
redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
redis.call('SREM', KEYS[3], ARGV[1] .. ' ' .. ARGV[2])
return 1
"""

# KEYS: user-calls:<receiver>, user-sessions:<receiver>, call:<sid>, user-calls:<initiator>
# ARGV: sid, [initiator, receiver] as JSON, ttl ms, key prefix
_RESERVE_CALL = """
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[4] .. 'call:' .. sid) == 1 then return 0 end
  redis.call('SREM', KEYS[1], sid)
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# KEYS: call:<sid>; ARGV: sid, key prefix
_RELEASE_CALL = """
local parties = redis.call('GET', KEYS[1])
if not parties then return 0 end
for _, uid in ipairs(cjson.decode(parties)) do
  redis.call('SREM', ARGV[2] .. 'user-calls:' .. uid, ARGV[1])
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: nodes, node:<n>:alive, node:<n>:conns, node:<n>:members, orphans, online
# ARGV: n, orphan deadline ms, key prefix
_CLAIM_DEAD_NODE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return -1 end
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local space = string.find(entry, ' ', 1, true)
  local conn, uid = string.sub(entry, 1, space - 1), string.sub(entry, space + 1)
  local conns = ARGV[3] .. 'conns:' .. uid
  redis.call('SREM', conns, conn)
  if redis.call('SCARD', conns) == 0 then redis.call('SREM', KEYS[6], uid) end
end
local members = redis.call('SMEMBERS', KEYS[4])
for _, entry in ipairs(members) do redis.call('ZADD', KEYS[5], ARGV[2], entry) end
redis.call('DEL', KEYS[3], KEYS[4])
return #members
"""


def _session_to_json(session: Session) -> str:
    return json.dumps(
        {
            "type": str(session.type),
            "audioOnly": session.audio_only,
            "sfu": session.sfu,
            "wasGroup": session.was_group,
            "participants": [
                {
                    "conn": p.conn_id,
                    "user": p.user.to_json(),
                    "audioMuted": p.audio_muted,
                    "videoMuted": p.video_muted,
                    "joinedAt": p.joined_at,
                    "recordingSince": p.recording_since,
                    "door": p.door,
                }
                for p in session.participants.values()
            ],
        },
        separators=(",", ":"),
    )


def _session_from_json(session_id: str, text: str) -> Session:
    data = json.loads(text)
    session = Session(
        id=session_id,
        type=SessionType(data["type"]),
        audio_only=data["audioOnly"],
        sfu=data.get("sfu"),
        was_group=bool(data.get("wasGroup", False)),
    )
    for p in data["participants"]:
        user = p["user"]
        session.participants[p["conn"]] = Participant(
            conn_id=p["conn"],
            user=User(uid=user["uid"], name=user["name"], avatar=user["avatar"]),
            audio_muted=p["audioMuted"],
            video_muted=p["videoMuted"],
            joined_at=p["joinedAt"],
            recording_since=p.get("recordingSince"),
            door=bool(p.get("door", False)),
        )
    return session


def _not_in_session(session_id: str) -> ProtocolError:
    return ProtocolError(ErrorCode.NOT_IN_SESSION, f"not in session {session_id}")


class RedisState(LiveState):
    survives_restart = True

    def __init__(
        self,
        url: str,
        *,
        rejoin_grace: float,
        ring_timeout: float,
        prefix: str = DEFAULT_PREFIX,
        heartbeat: float = HEARTBEAT_SECONDS,
        node_ttl: float = NODE_TTL_SECONDS,
    ) -> None:
        self.url = url
        self.node_id = uuid.uuid4().hex[:16]
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._p = prefix
        self._rejoin_grace = rejoin_grace
        # Ringing, then (accepted) the wait for the first join: see ringing.Ringing.
        self._reservation_ms = int((2 * ring_timeout + _RESERVATION_MARGIN_SECONDS) * 1000)
        self._heartbeat = heartbeat
        self._node_ttl_ms = int(node_ttl * 1000)
        self._remove_connection = self._redis.register_script(_REMOVE_CONNECTION)
        self._reserve = self._redis.register_script(_RESERVE_CALL)
        self._release = self._redis.register_script(_RELEASE_CALL)
        self._claim = self._redis.register_script(_CLAIM_DEAD_NODE)
        self._deliver: Deliver | None = None
        self._leave_orphan: LeaveOrphan | None = None
        self._pubsub: PubSub | None = None
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._local_connections: Callable[[], list[tuple[str, str]]] | None = None
        self._periodic: Callable[[], Awaitable[None]] | None = None
        self._rounds = 0

    # --- keys ---

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def _channel(self, node: str) -> str:
        return self._k("deliver", node)

    # --- node lifecycle ---

    async def start(
        self,
        deliver: Deliver | None = None,
        leave_orphan: LeaveOrphan | None = None,
        *,
        local_connections: Callable[[], list[tuple[str, str]]] | None = None,
        periodic: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Connect, announce this node, and start delivering (to `deliver`) what other nodes publish
        for its connections, the heartbeat, and the sweep of dead nodes' participants (`leave_orphan`).
        `local_connections` lists this node's authenticated connections as (uid, connection id), to
        put back should other nodes have taken this one for dead; `periodic` runs every few sweeps.

        Raises ConnectionError if Redis cannot be reached."""
        self._deliver = deliver
        self._leave_orphan = leave_orphan
        self._local_connections = local_connections
        self._periodic = periodic
        try:
            await self._redis.ping()
            await self._beat()
            if deliver is not None:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self._channel(self.node_id))
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            raise ConnectionError(f"cannot use Redis at {self.url}: {exc}") from None
        self._started = True
        if deliver is not None:
            self._tasks.append(asyncio.create_task(self._receive_loop(), name="redis-receive"))
            self._tasks.append(asyncio.create_task(self._publish_loop(), name="redis-publish"))
        self._tasks.append(asyncio.create_task(self._maintain_loop(), name="redis-heartbeat"))
        log.info("node %s: live state in Redis at %s", self.node_id, self.url)

    async def close(self) -> None:
        """Stop. The heartbeat key is deleted, so another node takes this one's participants over at
        once (they leave after the grace unless they rejoin there)."""
        if not self._started:
            return
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._k("node", self.node_id, "alive"))
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        await self._redis.aclose()

    async def _beat(self) -> bool:
        """Refresh the heartbeat; True if this node had been taken for dead (claimed) meanwhile."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("node", self.node_id, "alive"), str(time.time()), px=self._node_ttl_ms)
            pipe.sadd(self._k("nodes"), self.node_id)
            _, added = await pipe.execute()
        return bool(added)

    async def _maintain_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Redis heartbeat or sweep failed")

    async def maintain(self) -> None:
        """One round of the background work: heartbeat, recovery, sweep, and now and then `periodic`."""
        if await self._beat():
            await self._recover()
        await self.sweep()
        self._rounds += 1
        if self._periodic is not None and self._rounds % _PERIODIC_EVERY == 0:
            await self._periodic()

    async def _recover(self) -> None:
        """This node's heartbeat lapsed (Redis out of reach, or the event loop stalled) and another
        node claimed it: its connections go back into the presence and its participants that are
        still waiting out the grace become its own again."""
        log.warning("node %s was taken for dead; taking its connections and participants back", self.node_id)
        for uid, conn_id in self._local_connections() if self._local_connections is not None else []:
            await self.add_connection(uid, conn_id)
        key = self._k("orphans")
        for entry in _strings(await self._redis.zrange(key, 0, -1)):
            if node_of(entry.partition(" ")[0]) == self.node_id and await self._redis.zrem(key, entry):
                await self._redis.sadd(self._k("node", self.node_id, "members"), entry)

    async def sweep(self) -> None:
        """Claim dead nodes, then let the orphans whose grace is over leave."""
        for node in await self.claim_dead_nodes():
            log.info("node %s is gone: its connections left, its participants wait out the grace", node)
        if self._leave_orphan is None:
            return
        for session_id, conn_id in await self.due_orphans():
            try:
                await self._leave_orphan(session_id, conn_id)
            except ProtocolError:
                pass  # it rejoined elsewhere, or the session ended meanwhile
            except Exception:
                log.exception("removing %s from session %s failed", conn_id, session_id)

    async def claim_dead_nodes(self) -> list[str]:
        """Nodes whose heartbeat has gone that this node took over (each is claimed by one node)."""
        claimed = []
        deadline = int((time.time() + self._rejoin_grace) * 1000)
        for node in _strings(await self._redis.smembers(self._k("nodes"))):
            if node == self.node_id:
                continue
            keys = [
                self._k("nodes"),
                self._k("node", node, "alive"),
                self._k("node", node, "conns"),
                self._k("node", node, "members"),
                self._k("orphans"),
                self._k("online"),
            ]
            if int(await self._claim(keys=keys, args=[node, deadline, self._p])) >= 0:
                claimed.append(node)
        return claimed

    async def due_orphans(self) -> list[tuple[str, str]]:
        """Orphaned participants whose grace is over, as (session id, connection id); each one is
        handed to one node only."""
        key = self._k("orphans")
        due = []
        for entry in _strings(await self._redis.zrangebyscore(key, "-inf", int(time.time() * 1000))):
            if await self._redis.zrem(key, entry):
                conn_id, _, session_id = entry.partition(" ")
                due.append((session_id, conn_id))
        return due

    # --- delivery to other nodes ---

    def publish(self, node: str, conn_ids: list[str], message: ServerMessage) -> None:
        """Queue a message for connections held by `node`; sent in order by one task."""
        payload = json.dumps({"to": conn_ids, "message": message}, separators=(",", ":"))
        self._outbox.put_nowait((self._channel(node), payload))

    async def _publish_loop(self) -> None:
        while True:
            channel, payload = await self._outbox.get()
            try:
                await self._redis.publish(channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing to %s failed", channel)

    async def _receive_loop(self) -> None:
        assert self._pubsub is not None and self._deliver is not None
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get("type") != "message":
                        continue
                    try:
                        data = json.loads(item["data"])
                        self._deliver(list(data["to"]), data["message"])
                    except Exception:
                        log.exception("delivering a message from another node failed")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the Redis subscription failed; resubscribing")
                await asyncio.sleep(1.0)

    # --- transactions ---

    async def _transact(self, watch: list[str], body: Callable[[Pipeline], Awaitable[Any]]) -> Any:
        """Run `body` with `watch` watched: it reads through the pipeline, may watch more keys, then
        calls `pipe.multi()` and queues its writes. Retried whenever a watched key changed."""
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*watch)
                    result = await body(pipe)
                    await pipe.execute()
                    return result
                except WatchError:
                    continue

    async def _load(self, pipe: Pipeline | aioredis.Redis, session_id: str) -> Session | None:
        text = await pipe.get(self._k("session", session_id))
        return _session_from_json(session_id, _string(text)) if text is not None else None

    def _drop_participant(self, pipe: Pipeline, session_id: str, participant: Participant) -> None:
        """Queue the index updates of a participant leaving (the session itself is written apart)."""
        pipe.lrem(self._k("joined", participant.conn_id), 0, session_id)
        pipe.srem(self._k("user-sessions", participant.uid), session_id)
        pipe.srem(
            self._k("node", node_of(participant.conn_id), "members"), f"{participant.conn_id} {session_id}"
        )
        pipe.zrem(self._k("orphans"), f"{participant.conn_id} {session_id}")

    def _store(self, pipe: Pipeline, session: Session) -> None:
        if session.participants:
            pipe.set(self._k("session", session.id), _session_to_json(session))
        else:
            pipe.delete(self._k("session", session.id))

    # --- presence ---

    async def add_connection(self, uid: str, conn_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._k("conns", uid), conn_id)
            pipe.sadd(self._k("online"), uid)
            pipe.sadd(self._k("node", node_of(conn_id), "conns"), f"{conn_id} {uid}")
            await pipe.execute()

    async def remove_connection(self, uid: str, conn_id: str) -> None:
        keys = [self._k("conns", uid), self._k("online"), self._k("node", node_of(conn_id), "conns")]
        await self._remove_connection(keys=keys, args=[conn_id, uid])

    async def connections_of(self, uid: str) -> list[str]:
        return sorted(_strings(await self._redis.smembers(self._k("conns", uid))))

    async def online_uids(self) -> set[str]:
        return set(_strings(await self._redis.smembers(self._k("online"))))

    # --- sessions ---

    async def join(
        self,
        session_id: str,
        participant: Participant,
        *,
        session_type: SessionType,
        audio_only: bool,
        max_participants: int,
        max_sessions_per_connection: int,
    ) -> Session:
        joined_key = self._k("joined", participant.conn_id)

        async def body(pipe: Pipeline) -> Session:
            session = await self._load(pipe, session_id)
            joined = int(await pipe.llen(joined_key))
            if session is not None:
                if participant.conn_id in session.participants:
                    raise ProtocolError(ErrorCode.ALREADY_IN_SESSION, f"already in session {session_id}")
                if session.by_uid(participant.uid) is not None:
                    raise ProtocolError(
                        ErrorCode.ALREADY_IN_SESSION,
                        f"{participant.uid} is already in session {session_id} on another connection",
                    )
            if joined >= max_sessions_per_connection:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"a connection may be in at most {max_sessions_per_connection} sessions",
                )
            if session is not None and len(session.participants) >= max_participants:
                raise ProtocolError(
                    ErrorCode.SESSION_FULL, f"session {session_id} has {max_participants} participants"
                )
            if session is None:
                session = Session(id=session_id, type=session_type, audio_only=audio_only)
            session.add(copy.copy(participant))
            pipe.multi()
            self._store(pipe, session)
            pipe.rpush(joined_key, session_id)
            pipe.sadd(self._k("user-sessions", participant.uid), session_id)
            pipe.sadd(
                self._k("node", node_of(participant.conn_id), "members"),
                f"{participant.conn_id} {session_id}",
            )
            return session

        result: Session = await self._transact([self._k("session", session_id), joined_key], body)
        return result

    async def rejoin(
        self, session_id: str, uid: str, conn_id: str, audio_muted: bool, video_muted: bool
    ) -> Session | None:
        async def body(pipe: Pipeline) -> Session | None:
            session = await self._load(pipe, session_id)
            old = session.by_uid(uid) if session is not None else None
            pipe.multi()
            if session is None or old is None:
                return None
            if old.conn_id != conn_id:
                # Same place in join order, under the new connection.
                self._drop_participant(pipe, session_id, old)
                session.participants = {
                    (conn_id if cid == old.conn_id else cid): p for cid, p in session.participants.items()
                }
                pipe.rpush(self._k("joined", conn_id), session_id)
                pipe.sadd(self._k("user-sessions", uid), session_id)
                pipe.sadd(self._k("node", node_of(conn_id), "members"), f"{conn_id} {session_id}")
            old.conn_id, old.audio_muted, old.video_muted = conn_id, audio_muted, video_muted
            self._store(pipe, session)
            return session

        result: Session | None = await self._transact([self._k("session", session_id)], body)
        return result

    async def leave(self, session_id: str, conn_id: str) -> LeaveOutcome:
        async def body(pipe: Pipeline) -> LeaveOutcome:
            session = await self._load(pipe, session_id)
            if session is None or conn_id not in session.participants:
                raise _not_in_session(session_id)
            one_to_one = session.one_to_one
            participant = session.participants.pop(conn_id)
            others = list(session.participants.values())
            pipe.multi()
            self._drop_participant(pipe, session_id, participant)
            if one_to_one:
                for other in others:
                    self._drop_participant(pipe, session_id, other)
                session.participants.clear()
            self._store(pipe, session)
            return LeaveOutcome(
                participant=participant,
                others=others,
                session_over=one_to_one,
                session_empty=not session.participants,
            )

        result: LeaveOutcome = await self._transact([self._k("session", session_id)], body)
        return result

    async def end_session(self, session_id: str) -> list[Participant]:
        async def body(pipe: Pipeline) -> list[Participant]:
            session = await self._load(pipe, session_id)
            pipe.multi()
            if session is None:
                return []
            for participant in session.participants.values():
                self._drop_participant(pipe, session_id, participant)
            pipe.delete(self._k("session", session_id))
            return list(session.participants.values())

        result: list[Participant] = await self._transact([self._k("session", session_id)], body)
        return result

    async def get_session(self, session_id: str) -> Session | None:
        return await self._load(self._redis, session_id)

    async def member(self, session_id: str, conn_id: str) -> tuple[Session, Participant]:
        session = await self._load(self._redis, session_id)
        if session is None or conn_id not in session.participants:
            raise _not_in_session(session_id)
        return session, session.participants[conn_id]

    async def set_media(self, session_id: str, conn_id: str, audio_muted: bool, video_muted: bool) -> Session:
        def change(participant: Participant) -> None:
            participant.audio_muted, participant.video_muted = audio_muted, video_muted

        return await self._change_participant(session_id, conn_id, change)

    async def set_recording(self, session_id: str, conn_id: str, since: int | None) -> Session:
        def change(participant: Participant) -> None:
            participant.recording_since = since

        return await self._change_participant(session_id, conn_id, change)

    async def _change_participant(
        self, session_id: str, conn_id: str, change: Callable[[Participant], None]
    ) -> Session:
        async def body(pipe: Pipeline) -> Session:
            session = await self._load(pipe, session_id)
            if session is None or conn_id not in session.participants:
                raise _not_in_session(session_id)
            change(session.participants[conn_id])
            pipe.multi()
            self._store(pipe, session)
            return session

        result: Session = await self._transact([self._k("session", session_id)], body)
        return result

    async def set_audio_only(self, session_id: str, audio_only: bool) -> None:
        async def body(pipe: Pipeline) -> None:
            session = await self._load(pipe, session_id)
            pipe.multi()
            if session is not None:
                session.audio_only = audio_only
                self._store(pipe, session)

        await self._transact([self._k("session", session_id)], body)

    async def set_sfu(
        self, session_id: str, room: dict[str, Any], replacing: int | None = None
    ) -> dict[str, Any] | None:
        async def body(pipe: Pipeline) -> dict[str, Any] | None:
            session = await self._load(pipe, session_id)
            pipe.multi()
            if session is None:
                return None
            if (session.sfu["room"] if session.sfu is not None else None) == replacing:
                session.sfu = dict(room)
                self._store(pipe, session)
            return dict(session.sfu) if session.sfu is not None else None

        result: dict[str, Any] | None = await self._transact([self._k("session", session_id)], body)
        return result

    async def sessions_of_connection(self, conn_id: str) -> list[str]:
        return _strings(await self._redis.lrange(self._k("joined", conn_id), 0, -1))

    # --- calls in progress ---

    async def reserve_call(self, session_id: str, initiator_uid: str, receiver_uid: str) -> bool:
        keys = [
            self._k("user-calls", receiver_uid),
            self._k("user-sessions", receiver_uid),
            self._k("call", session_id),
            self._k("user-calls", initiator_uid),
        ]
        parties = json.dumps([initiator_uid, receiver_uid])
        return bool(await self._reserve(keys=keys, args=[session_id, parties, self._reservation_ms, self._p]))

    async def release_call(self, session_id: str) -> None:
        await self._release(keys=[self._k("call", session_id)], args=[session_id, self._p])

    # --- tests and tools ---

    async def orphan_count_is(self, count: int) -> bool:
        return int(await self._redis.zcard(self._k("orphans"))) == count

    async def live_nodes(self) -> set[str]:
        return set(_strings(await self._redis.smembers(self._k("nodes"))))
