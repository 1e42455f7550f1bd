"""Secrets: call tokens (HS256 JWTs), auth tokens and the admin key.

Only hashes of auth tokens and of a generated admin key are ever written down; the JWT signing key
lives in `<data_dir>/signing.key` (mode 0600) so call tokens survive a restart. Nothing here logs a
secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from kiosk.protocol import MAX_CALL_TOKEN_LENGTH, ErrorCode, ProtocolError, is_plausible_secret

SIGNING_KEY_FILE = "signing.key"
ADMIN_KEY_HASH_FILE = "admin-key.sha256"
ADMIN_KEY_ENV = "KIOSK_ADMIN_KEY"
_ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "sid", "iat", "exp", "jti"]


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a secret; the only form in which auth tokens and admin keys are stored.

    Never raises: a header or JSON string with lone surrogates (never a real secret) still hashes."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Constant-time equality of two hashes (hex), so timing tells nothing about how much matched."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def new_secret() -> str:
    """A fresh random auth token or admin key: 256 bits as hex. (Not base64: a leading "-" would make
    `--auth-token <token>` look like an option to argparse.)"""
    return secrets.token_hex(32)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write `path` with mode 0600 unless it exists; True if this call created it.

    Written to a temporary file first and then hard-linked into place, so a crash or a second server
    starting at the same moment never sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load_signing_key(data_dir: Path) -> bytes:
    """The JWT signing key, generated on first use."""
    path = Path(data_dir) / SIGNING_KEY_FILE
    if not path.exists():
        _create_exclusive(path, secrets.token_bytes(64))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it; a readable key lets anyone mint call tokens
    key = path.read_bytes()
    if len(key) < 32:
        raise RuntimeError(f"{path} is damaged (too short); delete it to generate a new key")
    return key


@dataclass(frozen=True)
class IssuedToken:
    token: str
    session_id: str
    uid: str
    expires_at: int  # ms


class CallTokens:
    """Issues and checks the call tokens that admit a user to one session."""

    def __init__(self, key: bytes, ttl_seconds: int) -> None:
        self._key = key
        self._ttl = ttl_seconds

    def issue(self, uid: str, session_id: str) -> IssuedToken:
        issued_at = int(time.time())
        expires = issued_at + self._ttl
        claims = {"sub": uid, "sid": session_id, "iat": issued_at, "exp": expires, "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, self._key, algorithm=_ALGORITHM)
        return IssuedToken(token=token, session_id=session_id, uid=uid, expires_at=expires * 1000)

    def verify(self, token: str, *, uid: str, session_id: str) -> dict[str, Any]:
        """The token's claims, or ProtocolError with TOKEN_INVALID / _EXPIRED / _WRONG_SESSION / _WRONG_USER."""
        if not is_plausible_secret(token, MAX_CALL_TOKEN_LENGTH):
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "call token rejected: malformed")
        try:
            # PyJWT checks the signature before any claim, so an altered token is TOKEN_INVALID
            # even when its (altered) expiry is in the past.
            claims = jwt.decode(
                token, self._key, algorithms=[_ALGORITHM], options={"require": _REQUIRED_CLAIMS}
            )
        except jwt.ExpiredSignatureError:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
            when = f" at {int(exp) * 1000}" if isinstance(exp, int | float) else ""
            raise ProtocolError(ErrorCode.TOKEN_EXPIRED, f"call token expired{when}") from None
        except jwt.InvalidTokenError as exc:
            raise ProtocolError(ErrorCode.TOKEN_INVALID, f"call token rejected: {_reason(exc)}") from None
        if not isinstance(claims.get("sid"), str) or not isinstance(claims.get("sub"), str):
            raise ProtocolError(ErrorCode.TOKEN_INVALID, "call token rejected: bad claims")
        if claims["sid"] != session_id:
            raise ProtocolError(ErrorCode.TOKEN_WRONG_SESSION, "call token was issued for another session")
        if claims["sub"] != uid:
            raise ProtocolError(ErrorCode.TOKEN_WRONG_USER, "call token was issued to another user")
        return claims


def _reason(exc: jwt.InvalidTokenError) -> str:
    # PyJWT's messages name the failed check without echoing the token.
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.DecodeError):
        return "malformed"
    return str(exc)[:200] or type(exc).__name__


class AdminKey:
    """Checks `X-Admin-Key` against the SHA-256 of the admin key, in constant time."""

    def __init__(self, key_hash: str) -> None:
        self._hash = key_hash

    def matches(self, presented: str | None) -> bool:
        if not presented:
            return False
        return same_hash(hash_secret(presented), self._hash)


@dataclass(frozen=True)
class AdminKeySetup:
    checker: AdminKey
    plain: str | None  # the key itself if it was given or generated by this start, else None
    generated: bool  # True only the first time, when the caller must show it once


def load_admin_key(data_dir: Path, configured: str | None) -> AdminKeySetup:
    """Admin key from the config, else $KIOSK_ADMIN_KEY, else the stored hash, else a new key."""
    given = configured or os.environ.get(ADMIN_KEY_ENV) or None
    if given:
        return AdminKeySetup(AdminKey(hash_secret(given)), given, generated=False)
    path = Path(data_dir) / ADMIN_KEY_HASH_FILE
    if not path.exists():
        key = new_secret()
        if _create_exclusive(path, hash_secret(key).encode()):
            return AdminKeySetup(AdminKey(hash_secret(key)), key, generated=True)
    stored = path.read_text().strip()
    if len(stored) != 64:
        raise RuntimeError(f"{path} is damaged; delete it to generate a new admin key")
    return AdminKeySetup(AdminKey(stored), None, generated=False)
