"""Everything one running server holds, reachable from a request as `request.app[CONTEXT]`."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from kiosk.server.config import ServerConfig
from kiosk.server.connections import Hub
from kiosk.server.doors import Doors
from kiosk.server.revocation import RevocationWatch
from kiosk.server.ringing import Ringing
from kiosk.server.sessions import Sessions
from kiosk.server.state import LiveState
from kiosk.server.storage import Storage
from kiosk.server.tokens import AdminKeySetup, CallTokens


@dataclass
class ServerContext:
    config: ServerConfig
    storage: Storage
    state: LiveState
    hub: Hub
    tokens: CallTokens
    admin: AdminKeySetup
    sessions: Sessions
    ringing: Ringing
    revocations: RevocationWatch
    doors: Doors


CONTEXT = web.AppKey("kiosk_context", ServerContext)
