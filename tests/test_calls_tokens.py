"""Call tokens through the SDK: each bad token refused with its own code, and the endpoint stays usable."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from calls_support import endpoints, new_session_id, running_server

from kiosk.calls import CallsError, CallSettingsBuilder, GenerateToken


def _tamper(token: str) -> str:
    """Change the session claim without re-signing."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = claims["exp"] + 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def _refused(endpoint, token: GenerateToken | str) -> str:
    with pytest.raises(CallsError) as refused:
        await endpoint.calls.start_session(token, CallSettingsBuilder().build())
    assert endpoint.calls.session is None
    return refused.value.code


async def test_each_bad_token_has_its_own_code(tmp_path):
    async with (
        running_server(tmp_path / "server", token_ttl=1) as server,
        endpoints(server.url, tmp_path, "alice", "bob") as (a, b),
    ):
        session = new_session_id()
        expired = await a.calls.generate_token(session)
        await asyncio.sleep(2.1)  # the server was started with one-second tokens
        assert await _refused(a, expired) == "TOKEN_EXPIRED"
        # Each of the others made just before it is shown (a second is short on a loaded machine), so
        # that it is refused for what is wrong with it, not for having expired meanwhile.
        tampered = _tamper((await a.calls.generate_token(session)).token)
        assert await _refused(a, tampered) == "TOKEN_INVALID"
        bobs = await b.calls.generate_token(session)
        assert await _refused(a, bobs) == "TOKEN_WRONG_USER"
        # a token for another session, presented for this one
        other = await a.calls.generate_token(new_session_id())
        wrong = GenerateToken(other.token, session, other.uid, other.expires_at)
        assert await _refused(a, wrong) == "TOKEN_WRONG_SESSION"
        with pytest.raises(CallsError) as garbage:
            await a.calls.start_session("not-a-token")
        assert garbage.value.code == "TOKEN_INVALID"
        # a refused start leaves nothing open behind it
        assert a.devices.opened_speakers == []

        # the same connection is still usable: a fresh token, used within its one second, is accepted
        fresh = await a.calls.generate_token(session)
        await a.calls.start_session(fresh, CallSettingsBuilder().build())
        assert a.calls.session is not None and a.calls.session.active


async def test_bad_auth_token_is_refused(tmp_path):
    from kiosk.calls import Calls

    async with running_server(tmp_path / "server") as server:
        calls = Calls(server.url, auth_token="nope")
        try:
            with pytest.raises(CallsError) as refused:
                await calls.generate_token("s-1")
            assert refused.value.code == "UNAUTHORIZED"
            with pytest.raises(CallsError) as login:
                await calls.login()
            assert login.value.code == "UNAUTHORIZED"
        finally:
            await calls.close()


async def test_unreachable_server_is_a_clear_error(tmp_path):
    from kiosk.calls import Calls, ConnectionFailedError

    calls = Calls("http://127.0.0.1:9", auth_token="x")
    try:
        with pytest.raises(ConnectionFailedError, match="cannot reach the call server"):
            await calls.generate_token("s-1")
    finally:
        await calls.close()
