"""Errors raised by the Calls SDK. Each carries a stable `code` an app can branch on."""

from __future__ import annotations


class CallsError(Exception):
    """A call operation failed; `code` is a protocol error code or one of the SDK's own below."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SessionNotActiveError(CallsError):
    """An in-call method was used with no active call session."""

    def __init__(self, method: str) -> None:
        super().__init__("SESSION_NOT_ACTIVE", f"{method}() can only be called when a call session is active")


class NotSupportedError(CallsError):
    """The device cannot do this (screen share with no screen source, for example)."""

    def __init__(self, message: str) -> None:
        super().__init__("NOT_SUPPORTED", message)


class SettingsError(CallsError, ValueError):
    """A CallSettingsBuilder value is out of range or of the wrong type."""

    def __init__(self, message: str) -> None:
        super().__init__("INVALID_SETTINGS", message)


class ConnectionFailedError(CallsError):
    """The call server could not be reached, or the connection to it dropped."""

    def __init__(self, message: str) -> None:
        super().__init__("CONNECTION_FAILED", message)
