"""The call server: REST, signaling WebSocket and ringing (docs/protocol.md)."""

from kiosk.server.app import RunningServer, create_app, run_server, start_server
from kiosk.server.config import ServerConfig

__all__ = ["RunningServer", "ServerConfig", "create_app", "run_server", "start_server"]
