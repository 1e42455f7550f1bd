"""A new kiosk's side of pairing with the building's host (`kiosk pair`, docs/intercom.md).

1. The host's CA is fetched (`GET /v1/pair/ca`) over a TLS connection that cannot be verified yet,
   and kept only if its SHA-256 is the fingerprint the host advertises and shows on its screen
   (trust on first use: the person compares the two).
2. The code is sent (`POST /v1/pair`) over TLS verified against that CA; the answer is this kiosk's
   user and auth token.
3. The token and the CA go into files next to the kiosk's config, and the config's `[server]` is
   pointed at the host: `role = "member"`, `url`, `auth_token_file`, `ca_file`. Every other line of
   the config stays as the person wrote it (the keys that would override these are commented out, and
   a copy of the file as it was is kept); when the file cannot be edited safely, the lines to add are
   given instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kiosk.lan import fingerprint_of_pem, show_fingerprint

TOKEN_FILE = "building-token"
CA_FILE = "building-ca.pem"
BACKUP_SUFFIX = ".before-pair"
_TIMEOUT = aiohttp.ClientTimeout(total=15)
_RESOLVE_SECONDS = 2.0
# [server] keys that would take precedence over what pairing writes: commented out.
_OVERRIDING = ("auth_token", "urls", "embedded")


class PairingError(Exception):
    """Pairing did not happen; the message is one line a person can act on."""


@dataclass(frozen=True)
class Paired:
    uid: str
    name: str
    auth_token: str = field(repr=False)
    ca_pem: str
    fingerprint: str
    url: str  # the address it paired through


async def fetch_ca(http: aiohttp.ClientSession, url: str, fingerprint: str) -> str:
    """The host's CA certificate, if it is the one with `fingerprint`."""
    try:
        # Not verified: there is nothing to verify it against yet. What makes it trusted is the
        # fingerprint check below, against the advertised (and shown) one.
        async with http.get(f"{url}/v1/pair/ca", ssl=False) as response:
            body = await _json(response)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PairingError(f"cannot reach the host at {url}: {_reason(exc)}") from None
    pem = body.get("caPem") if isinstance(body, dict) else None
    if not isinstance(pem, str):
        raise PairingError(f"{url} did not answer with a CA certificate: {_refusal(body)}")
    try:
        got = fingerprint_of_pem(pem)
    except ValueError as exc:
        raise PairingError(f"{url} answered with something that is no certificate: {exc}") from None
    if got != fingerprint:
        raise PairingError(
            f"the CA at {url} ({show_fingerprint(got)}) is not the one the host advertises "
            f"({show_fingerprint(fingerprint)}): someone else may be answering; not paired"
        )
    return pem


async def pair(
    urls: list[str] | tuple[str, ...], fingerprint: str, code: str, name: str, uid: str | None = None
) -> Paired:
    """Pair with the host at the first of `urls` that answers; raises PairingError."""
    fingerprint = fingerprint.lower()
    if not urls:
        raise PairingError("the host gave no address")
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
        problems: list[str] = []
        for url in urls:
            try:
                pem = await fetch_ca(http, url, fingerprint)
            except PairingError as exc:
                if "cannot reach" not in str(exc):
                    raise  # a wrong CA is not retried elsewhere
                problems.append(str(exc))
                continue
            return await _request(http, url, pem, fingerprint, code, name, uid)
    raise PairingError("; ".join(problems))


async def _request(
    http: aiohttp.ClientSession, url: str, pem: str, fingerprint: str, code: str, name: str, uid: str | None
) -> Paired:
    verified = ssl.create_default_context(cadata=pem)  # only this CA, and the host name checked
    body: dict[str, Any] = {"code": code, "name": name}
    if uid:
        body["uid"] = uid
    try:
        async with http.post(f"{url}/v1/pair", json=body, ssl=verified) as response:
            answer = await _json(response)
            status = response.status
    except aiohttp.ClientConnectorCertificateError as exc:
        raise PairingError(
            f"the host's certificate at {url} does not verify against its own CA: {exc.certificate_error}"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PairingError(f"cannot reach the host at {url}: {_reason(exc)}") from None
    if status != 201 or not isinstance(answer, dict):
        raise PairingError(f"the host refused: {_refusal(answer)}")
    token, got_pem = answer.get("authToken"), answer.get("caPem")
    if (
        not isinstance(token, str)
        or not isinstance(got_pem, str)
        or fingerprint_of_pem(got_pem) != fingerprint
    ):
        raise PairingError("the host's answer is not a pairing (no token, or another CA)")
    return Paired(
        uid=str(answer.get("uid")),
        name=str(answer.get("name")),
        auth_token=token,
        ca_pem=pem,
        fingerprint=fingerprint,
        url=url,
    )


async def member_url(paired_url: str, hostname: str) -> str:
    """The address to keep in the config: `https://<hostname>.local:<port>` when this machine resolves
    that name to the address it paired through (mDNS name resolution, as Raspberry Pi OS has it: it
    follows the host to a new address), else the address itself."""
    parts = urlsplit(paired_url)
    if not hostname or not parts.hostname:
        return paired_url
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(loop.getaddrinfo(hostname, parts.port), _RESOLVE_SECONDS)
    except (OSError, TimeoutError, UnicodeError):
        return paired_url
    if any(info[4][0] == parts.hostname for info in found):
        return f"https://{hostname}:{parts.port}"
    return paired_url


def pick_code(text: str) -> str:
    """A code as typed: "482 913" or "482-913" is 482913."""
    return re.sub(r"[\s-]", "", text)


# ----------------------------------------------------------------------------- files and config


@dataclass(frozen=True)
class MemberFiles:
    token_file: Path
    ca_file: Path


def write_member_files(directory: Path, paired: Paired, like: Path | None = None) -> MemberFiles:
    """The token (mode 0640) and the CA (0644) in `directory`, owned like the file `like` (the config:
    run as root, the kiosk's group must read them, as it reads the config)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = MemberFiles(directory / TOKEN_FILE, directory / CA_FILE)
    _write_file(files.token_file, paired.auth_token + "\n", 0o640, like)
    _write_file(files.ca_file, paired.ca_pem, 0o644, like)
    return files


def member_values(url: str, files: MemberFiles) -> dict[str, str]:
    return {
        "role": "member",
        "url": url,
        "auth_token_file": str(files.token_file),
        "ca_file": str(files.ca_file),
    }


def member_lines(values: Mapping[str, str]) -> str:
    """What to put in the config's [server] table by hand."""
    return "[server]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


class ConfigEditError(Exception):
    """The config could not be edited safely (the message says why); nothing was written."""


def edit_member_config(text: str, values: Mapping[str, str]) -> str:
    """`text` with its [server] table's keys set to `values`, and auth_token, urls and embedded
    commented out; every other line unchanged. Raises ConfigEditError when the result would not read
    back as exactly that (a layout this edit does not understand)."""
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigEditError(f"the config is not valid TOML: {exc}") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"^\s*\[\s*server\s*\]\s*(#.*)?$", line)), None
    )
    if start is None:
        lines += ["\n", "[server]\n"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
    section = lines[start + 1 : end]
    missing: list[str] = []
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}\n"
        at = _key_line(section, key)
        if at is None:
            missing.append(line)
        else:
            section[at] = line
    for key in _OVERRIDING:
        at = _key_line(section, key)
        if at is None:
            continue
        depth = 0
        for i in range(at, len(section)):  # the whole value: an array may span lines
            depth += section[i].count("[") - section[i].count("]")
            section[i] = "# " + section[i] if section[i].strip() else section[i]
            if depth <= 0:
                break
    if section and section[0].strip() and missing:
        missing.append("")
    result = "".join([*lines[: start + 1], *missing, *section, *lines[end:]])
    _check_edit(before, result, values)
    return result


def _key_line(section: list[str], key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    return next((i for i, line in enumerate(section) if pattern.match(line)), None)


def _check_edit(before: dict[str, Any], result: str, values: Mapping[str, str]) -> None:
    try:
        after = tomllib.loads(result)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigEditError(f"the edited config would not be valid TOML ({exc})") from None
    server_before = dict(before.get("server", {}))
    server_after = dict(after.get("server", {}))
    expected = {k: v for k, v in server_before.items() if k not in _OVERRIDING} | dict(values)
    others_before = {k: v for k, v in before.items() if k != "server"}
    others_after = {k: v for k, v in after.items() if k != "server"}
    if server_after != expected or others_after != others_before:
        raise ConfigEditError("its [server] table is laid out in a way this edit does not handle")


def write_config(path: Path, text: str) -> Path:
    """Replace the config at `path` with `text`, keeping its mode and owner; the file as it was is kept
    as `<path>.before-pair`. Returns that copy's path."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    shutil.copy2(path, backup)
    _write_file(path, text, os.stat(path).st_mode & 0o777, path)
    return backup


def _write_file(path: Path, text: str, mode: int, like: Path | None) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if like is not None and os.geteuid() == 0:
            st = os.stat(like)
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# ----------------------------------------------------------------------------- answers


async def _json(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {"error": {"message": f"HTTP {response.status}, not JSON"}}


def _refusal(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("code")
        return f"{error['message']}" + (f" ({code})" if isinstance(code, str) else "")
    return "an answer that is no pairing"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Applied:
    """What pairing wrote: the files, and the config edited (its backup), or the lines to add."""

    files: MemberFiles
    backup: Path | None  # the config as it was, when it was edited
    lines: str  # the [server] lines, when the config was left alone (empty when edited)
    why_not: str  # why the config was left alone


async def apply_pairing(config_path: Path, paired: Paired, hostname: str, *, edit: bool = True) -> Applied:
    """After `pair`: the token and the CA next to the config, and the config's [server] table set to
    use the host (a backup kept). A config the edit cannot safely follow is left alone; `lines` then
    says what to add. `kiosk pair` and a new kiosk's pairing screen both end here."""
    from kiosk.config import ConfigError, parse_config

    url = await member_url(paired.url, hostname)
    files = await asyncio.to_thread(write_member_files, config_path.parent, paired, config_path)
    values = member_values(url, files)
    if not edit:
        return Applied(files, None, member_lines(values), "")
    text = await asyncio.to_thread(config_path.read_text)
    try:
        edited = edit_member_config(text, values)
        parse_config(edited, str(config_path), check_devices=False)
    except (ConfigEditError, ConfigError) as exc:  # any doubt: leave the person's file alone
        return Applied(files, None, member_lines(values), str(exc))
    backup = await asyncio.to_thread(write_config, config_path, edited)
    return Applied(files, backup, "", "")
