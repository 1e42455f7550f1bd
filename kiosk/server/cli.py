"""`kiosk server` and `kiosk users` subcommands; kiosk/cli.py adds them to its parser.

Each parser sets `func`, which takes the parsed namespace and returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from kiosk.protocol import (
    DEFAULT_MAX_PARTICIPANTS,
    DEFAULT_MESH_LIMIT,
    DEFAULT_REJOIN_GRACE,
    DEFAULT_RING_TIMEOUT,
    DEFAULT_SFU_MAX_PARTICIPANTS,
    DEFAULT_TOKEN_TTL,
)
from kiosk.server.config import DEFAULT_TURN_TTL

DATA_DIR_ENV = "KIOSK_DATA_DIR"
TURN_SECRET_ENV = "KIOSK_TURN_SECRET"
JANUS_ADMIN_KEY_ENV = "KIOSK_JANUS_ADMIN_KEY"  # the VideoRoom plugin's admin_key, if it has one
JANUS_URL_ENV = "KIOSK_JANUS_URL"
JANUS_PUBLIC_URL_ENV = "KIOSK_JANUS_PUBLIC_URL"
DATABASE_URL_ENV = "KIOSK_DATABASE_URL"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"database and keys (default: ${DATA_DIR_ENV} or ./data)",
    )


def add_server_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server", help="run the call server", description="Run the call server (REST + signaling WebSocket)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    _add_data_dir(parser)
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--admin-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the admin key for user administration over REST from FILE (default: $KIOSK_ADMIN_KEY, "
        "else generated at first start and shown once)",
    )
    keys.add_argument(
        "--admin-key",
        default=None,
        metavar="KEY",
        help="the admin key itself (prefer --admin-key-file or $KIOSK_ADMIN_KEY: a flag shows in the "
        "process list)",
    )
    parser.add_argument(
        "--picture-days",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="how long a call keeps the still of its caller taken while it rang (default 30; 0: none)",
    )
    parser.add_argument(
        "--max-pending-websockets",
        type=int,
        default=20,
        metavar="N",
        help="WebSockets not yet signed in that one client address may hold (default 20; 0: no cap; "
        "behind a reverse proxy every client has its address: raise it)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="an origin (https://reception.example) whose pages may use the REST API and the WebSocket "
        "(repeatable; default none: same origin only)",
    )
    parser.add_argument(
        "--token-ttl", type=int, default=DEFAULT_TOKEN_TTL, help="call-token lifetime, seconds"
    )
    parser.add_argument(
        "--ring-timeout", type=float, default=DEFAULT_RING_TIMEOUT, help="seconds before a call is unanswered"
    )
    parser.add_argument(
        "--max-participants",
        type=int,
        default=None,
        help=f"participants per session (default {DEFAULT_MAX_PARTICIPANTS}, "
        f"or {DEFAULT_SFU_MAX_PARTICIPANTS} with --janus-url)",
    )
    parser.add_argument(
        "--rejoin-grace",
        type=float,
        default=DEFAULT_REJOIN_GRACE,
        help="seconds a dropped endpoint keeps its place in its sessions (0: leaves at once)",
    )
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN URL handed to clients as is, without credentials (repeatable)",
    )
    parser.add_argument(
        "--turn-url",
        action="append",
        default=[],
        metavar="URL",
        help="TURN URL handed to clients with short-lived credentials, e.g. turn:turn.example.org:3478"
        "?transport=udp (repeatable; needs the shared secret)",
    )
    parser.add_argument(
        "--turn-secret",
        default=None,
        metavar="SECRET",
        help=f"coturn's static-auth-secret (default: ${TURN_SECRET_ENV}; prefer the variable, "
        "a flag shows in the process list)",
    )
    parser.add_argument(
        "--turn-ttl",
        type=int,
        default=DEFAULT_TURN_TTL,
        help=f"TURN credential lifetime, seconds (default {DEFAULT_TURN_TTL}; must outlast a call)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, default=None, metavar="FILE", help="PEM certificate (chain): serve HTTPS/WSS"
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE", help="the certificate's PEM private key"
    )
    parser.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="share live state with other server processes through this Redis, e.g. redis://127.0.0.1:6379/0 "
        "(all processes also share --data-dir, or --database; see docs/scale-out.md)",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get(DATABASE_URL_ENV) or None,
        metavar="URL",
        help="keep users, call logs and the shared keys in this PostgreSQL, e.g. postgresql://kiosk@db/kiosk, "
        f"so processes on several hosts serve as one (default ${DATABASE_URL_ENV}, which keeps a password "
        "out of the process list; without it: SQLite in --data-dir; see docs/scale-out.md)",
    )
    parser.add_argument(
        "--janus-url",
        default=os.environ.get(JANUS_URL_ENV) or None,
        metavar="URL",
        help="Janus HTTP API for group calls, e.g. http://127.0.0.1:8088/janus: a session of more than "
        f"--mesh-limit participants goes through a VideoRoom there (docs/sfu.md; default ${JANUS_URL_ENV}); "
        f"the VideoRoom plugin's admin_key comes from ${JANUS_ADMIN_KEY_ENV}",
    )
    parser.add_argument(
        "--janus-public-url",
        default=os.environ.get(JANUS_PUBLIC_URL_ENV) or None,
        metavar="URL",
        help=f"Janus's HTTP API as endpoints reach it (default ${JANUS_PUBLIC_URL_ENV}, else --janus-url)",
    )
    parser.add_argument(
        "--mesh-limit",
        type=int,
        default=DEFAULT_MESH_LIMIT,
        help=f"largest session whose media is peer to peer; larger ones use Janus (default {DEFAULT_MESH_LIMIT})",
    )
    parser.set_defaults(func=_run_server)
    return parser


def read_secret_file(path: Path, what: str) -> str:
    """The secret in `path` (its first line, stripped); ValueError naming the file if there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ValueError(f"{what} file {path}: {reason}") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ValueError(f"{what} file {path} is empty")
    return secret


def _run_server(args: argparse.Namespace) -> int:
    # Imported here so `kiosk users ...` and `--help` do not load the whole server.
    from kiosk.server.app import TLSConfigError, run_server, server_ssl_context
    from kiosk.server.config import ServerConfig

    try:
        admin_key = args.admin_key
        if args.admin_key_file is not None:
            admin_key = read_secret_file(args.admin_key_file, "admin key")
        config = ServerConfig(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir or default_data_dir(),
            admin_key=admin_key,
            cors_origins=list(args.cors_origin),
            max_pending_websockets_per_address=args.max_pending_websockets,
            picture_days=args.picture_days,
            token_ttl=args.token_ttl,
            ring_timeout=args.ring_timeout,
            max_participants=args.max_participants,
            rejoin_grace=args.rejoin_grace,
            ice_servers=[{"urls": [url]} for url in args.ice_server],
            turn_urls=list(args.turn_url),
            turn_secret=args.turn_secret or os.environ.get(TURN_SECRET_ENV) or None,
            turn_ttl=args.turn_ttl,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            redis_url=args.redis,
            database_url=args.database,
            janus_url=args.janus_url,
            janus_public_url=args.janus_public_url,
            janus_admin_key=os.environ.get(JANUS_ADMIN_KEY_ENV) or None,
            mesh_limit=args.mesh_limit,
        )
        server_ssl_context(config)  # a bad certificate or key: one line and exit 2, before starting
    except (ValueError, TLSConfigError) as exc:
        print(f"kiosk server: {exc}", file=sys.stderr)
        return 2
    database_errors: tuple[type[Exception], ...] = ()
    if config.database_url is not None:
        from kiosk.server.storage_pg import DatabaseUnavailableError

        database_errors = (DatabaseUnavailableError,)
    try:
        run_server(config)
    except TLSConfigError as exc:  # the files changed since the check above
        print(f"kiosk server: {exc}", file=sys.stderr)
        return 2
    except database_errors as exc:  # PostgreSQL out of reach or unusable at start
        print(f"kiosk server: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken, the data dir is not writable
        print(f"kiosk server: {exc}", file=sys.stderr)
        return 1
    return 0


def add_users_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "users", help="manage users", description="Manage users directly in the data directory."
    )
    actions = parser.add_subparsers(dest="users_command", metavar="{add,list,revoke,remove,doors}")
    actions.required = True
    add = actions.add_parser("add", help="create a user and print its auth token")
    add.add_argument("uid")
    add.add_argument("--name", required=True)
    add.add_argument("--avatar", default=None, metavar="URL")
    _add_data_dir(add)
    add.set_defaults(func=_users_add)
    listing = actions.add_parser("list", help="list users")
    _add_data_dir(listing)
    listing.set_defaults(func=_users_list)
    revoke = actions.add_parser(
        "revoke", help="revoke a user's auth tokens (open connections close within seconds)"
    )
    revoke.add_argument("uid")
    revoke.add_argument("--new-token", action="store_true", help="print a new auth token for the user")
    _add_data_dir(revoke)
    revoke.set_defaults(func=_users_revoke)
    remove = actions.add_parser("remove", help="remove a user (its calls stay in the others' call logs)")
    remove.add_argument("uid")
    _add_data_dir(remove)
    remove.set_defaults(func=_users_remove)
    doors = actions.add_parser("doors", help="allow or deny a user opening door kiosks it is in a call with")
    doors.add_argument("uid")
    doors.add_argument("permission", choices=["allow", "deny"])
    _add_data_dir(doors)
    doors.set_defaults(func=_users_doors)
    return parser


def add_groups_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "groups",
        help="manage ring groups",
        description="Ring groups (Reception): called like a user, they ring every member; the first to answer "
        "takes the call.",
    )
    actions = parser.add_subparsers(dest="groups_command", metavar="{add,list,join,leave}")
    actions.required = True
    add = actions.add_parser("add", help="create a ring group")
    add.add_argument("uid")
    add.add_argument("--name", required=True)
    _add_data_dir(add)
    add.set_defaults(func=_groups_add)
    listing = actions.add_parser("list", help="list ring groups and their members")
    _add_data_dir(listing)
    listing.set_defaults(func=_groups_list)
    for verb, joining in (("join", True), ("leave", False)):
        member = actions.add_parser(
            verb, help=f"{'add a user to' if joining else 'take a user out of'} a group"
        )
        member.add_argument("group")
        member.add_argument("uid")
        _add_data_dir(member)
        member.set_defaults(func=_groups_member, joining=joining)
    return parser


def _groups_add(args: argparse.Namespace) -> int:
    from kiosk.server.admin import UserExistsError, add_group

    try:
        add_group(args.data_dir or default_data_dir(), args.uid, args.name)
    except (UserExistsError, ValueError, OSError, sqlite3.Error) as exc:
        print(f"kiosk groups add: {exc}", file=sys.stderr)
        return 1
    print(f"ring group {args.uid} made; add members with `kiosk groups join {args.uid} UID`", file=sys.stderr)
    return 0


def _groups_list(args: argparse.Namespace) -> int:
    from kiosk.server.admin import list_groups

    try:
        groups = list_groups(args.data_dir or default_data_dir())
    except (OSError, sqlite3.Error) as exc:
        print(f"kiosk groups list: {exc}", file=sys.stderr)
        return 1
    for group, members in groups:
        print(f"{group['uid']}\t{group['name']}\t{' '.join(members)}")
    return 0


def _groups_member(args: argparse.Namespace) -> int:
    from kiosk.server.admin import UnknownUserError, set_group_member

    try:
        set_group_member(args.data_dir or default_data_dir(), args.group, args.uid, args.joining)
    except (UnknownUserError, OSError, sqlite3.Error) as exc:
        print(f"kiosk groups {'join' if args.joining else 'leave'}: {exc}", file=sys.stderr)
        return 1
    return 0


def _users_doors(args: argparse.Namespace) -> int:
    from kiosk.server.admin import UnknownUserError, set_door_permission

    try:
        set_door_permission(args.data_dir or default_data_dir(), args.uid, args.permission == "allow")
    except (UnknownUserError, OSError, sqlite3.Error) as exc:
        print(f"kiosk users doors: {exc}", file=sys.stderr)
        return 1
    verb = "may" if args.permission == "allow" else "may not"
    print(f"{args.uid} {verb} open doors", file=sys.stderr)
    return 0


def _users_revoke(args: argparse.Namespace) -> int:
    from kiosk.server.admin import UnknownUserError, revoke_tokens

    try:
        token = revoke_tokens(args.data_dir or default_data_dir(), args.uid, new_token=args.new_token)
    except (UnknownUserError, OSError, sqlite3.Error) as exc:
        print(f"kiosk users revoke: {exc}", file=sys.stderr)
        return 1
    print(f"revoked every auth token of {args.uid}", file=sys.stderr)
    if token is not None:
        print(token)  # alone on stdout, as for `kiosk users add`
    return 0


def _users_remove(args: argparse.Namespace) -> int:
    from kiosk.server.admin import UnknownUserError, remove_user

    try:
        remove_user(args.data_dir or default_data_dir(), args.uid)
    except (UnknownUserError, OSError, sqlite3.Error) as exc:
        print(f"kiosk users remove: {exc}", file=sys.stderr)
        return 1
    print(f"removed {args.uid}", file=sys.stderr)
    return 0


def _users_add(args: argparse.Namespace) -> int:
    from kiosk.server.admin import UserExistsError, add_user

    try:
        created = add_user(args.data_dir or default_data_dir(), args.uid, args.name, args.avatar)
    except (UserExistsError, ValueError, OSError, sqlite3.Error) as exc:
        print(f"kiosk users add: {exc}", file=sys.stderr)
        return 1
    token = created.pop("authToken")
    print(json.dumps(created), file=sys.stderr)
    print(token)  # alone on stdout, so `TOKEN=$(kiosk users add ...)` works
    return 0


def _users_list(args: argparse.Namespace) -> int:
    from kiosk.server.admin import list_users

    try:
        users = list_users(args.data_dir or default_data_dir())
    except (OSError, sqlite3.Error) as exc:
        print(f"kiosk users list: {exc}", file=sys.stderr)
        return 1
    for user in users:
        print(f"{user['uid']}\t{user['name']}\t{user['avatar'] or ''}")
    return 0
