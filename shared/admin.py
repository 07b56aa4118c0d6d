"""Operator command line for bans, blocks, revocations and token usage kept in Redis.

Run `python -m shared.admin --help` (or `subgate-admin`). It reads only `REDIS_URL` and
`REDIS_CLUSTER` from the environment or `.env`, and scans every master of a Cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.limits import user_keys
from shared.redis import REDIS_ERRORS, SyncRedis, create_sync_redis
from shared.settings import SettingsError, load_redis_settings
from shared.usage import NO_BUDGET, read_usage, reset_usage

_BAN_PREFIX = "subgate:ban:{"
_BLOCK_PREFIX = "subgate:block:{"


def _utc(seconds: str | None) -> str:
    if not seconds:
        return "-"
    moment = datetime.fromtimestamp(int(seconds), tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _user_of(key: str, prefix: str) -> str:
    return key[len(prefix) : -1]


def _scan_users(client: SyncRedis, prefix: str) -> Iterator[str]:
    """Users with a key under `prefix`, across every master of a Cluster."""
    seen: set[str] = set()
    for key in client.scan_iter(match=prefix + "*", count=500):
        user = _user_of(str(key), prefix)
        if user not in seen:
            seen.add(user)
            yield user


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _ban_row(client: SyncRedis, user: str) -> dict[str, Any]:
    keys = user_keys(user)
    ban = {str(k): str(v) for k, v in client.hgetall(keys["ban"]).items()}
    block_ttl = int(client.ttl(keys["block"]))
    return {
        "user": user,
        "strikes": int(ban.get("strikes", 0)),
        "banned": "banned_at" in ban,
        "banned_at": _utc(ban.get("banned_at")),
        "blocked_for_seconds": max(block_ttl, 0) if block_ttl != -2 else None,
    }


def _window_count(client: SyncRedis, key: str, seconds: int) -> int:
    now_s, now_us = client.time()
    since = (int(now_s) * 1_000_000 + int(now_us)) - seconds * 1_000_000
    return int(client.zcount(key, f"({since}", "+inf"))


def cmd_bans(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    users = set(_scan_users(client, _BAN_PREFIX)) | set(
        _scan_users(client, _BLOCK_PREFIX)
    )
    rows = [_ban_row(client, user) for user in sorted(users)]
    if args.banned:
        rows = [row for row in rows if row["banned"]]
    if args.json:
        return {"users": rows}
    if not rows:
        return "No users with strikes, blocks or bans."
    table = [
        (
            r["user"],
            r["strikes"],
            "yes" if r["banned"] else "no",
            r["banned_at"],
            "-" if r["blocked_for_seconds"] is None else f"{r['blocked_for_seconds']}s",
        )
        for r in rows
    ]
    return _table(["USER", "STRIKES", "BANNED", "BANNED AT", "BLOCKED FOR"], table)


def cmd_show(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    keys = user_keys(args.user)
    info = _ban_row(client, args.user)
    info["block_reason"] = client.get(keys["block"])
    info["revoked"] = sorted(str(otid) for otid in client.smembers(keys["revoked"]))
    info["requests_last_minute"] = _window_count(client, keys["minute"], 60)
    info["requests_last_hour"] = _window_count(client, keys["hour"], 3600)
    if args.json:
        return info
    blocked = info["blocked_for_seconds"]
    lines = [
        ("user", info["user"]),
        ("banned", f"yes, since {info['banned_at']}" if info["banned"] else "no"),
        ("strikes", info["strikes"]),
        (
            "blocked",
            "no"
            if blocked is None
            else f"{blocked}s more ({info['block_reason']} rule)",
        ),
        ("requests, last minute", info["requests_last_minute"]),
        ("requests, last hour", info["requests_last_hour"]),
        ("revoked purchases", ", ".join(info["revoked"]) or "none"),
    ]
    return "\n".join(f"{name + ':':<24}{value}" for name, value in lines)


def cmd_unban(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    keys = user_keys(args.user)
    existed = int(client.delete(keys["ban"], keys["strikes"]))
    if args.json:
        return {"user": args.user, "changed": existed > 0}
    if existed:
        return f"Lifted the ban on {args.user} and cleared its strikes."
    return f"{args.user} had no ban and no strikes."


def cmd_unblock(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    # The request windows go too: while they hold the requests that caused the block,
    # the user's next request would be blocked again (with another strike). One DEL of
    # all three keys (one hash tag, one slot), so a retry cannot land between them.
    keys = user_keys(args.user)
    existed = bool(client.exists(keys["block"]))
    client.delete(keys["block"], keys["minute"], keys["hour"])
    if args.json:
        return {"user": args.user, "changed": existed, "windows_emptied": True}
    if existed:
        return f"Lifted the block on {args.user} and emptied its request windows."
    return f"{args.user} was not blocked; emptied its request windows."


def cmd_revoked(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    otids = sorted(
        str(otid) for otid in client.smembers(user_keys(args.user)["revoked"])
    )
    if args.json:
        return {"user": args.user, "revoked": otids}
    if not otids:
        return f"{args.user} has no revoked purchases."
    return "\n".join(otids)


def cmd_restore(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    removed = int(client.srem(user_keys(args.user)["revoked"], args.otid))
    if args.json:
        return {"user": args.user, "otid": args.otid, "changed": removed > 0}
    if removed:
        return f"Restored purchase {args.otid} of {args.user}."
    return f"Purchase {args.otid} of {args.user} was not revoked."


def cmd_usage(client: SyncRedis, args: argparse.Namespace) -> dict[str, Any] | str:
    report = read_usage(client, args.user)
    if args.json:
        return report.as_json(NO_BUDGET)
    lines = [("user", report.user), ("reserved now", f"{report.reserved} tokens")]
    for label, period in (("today", report.day), ("this month", report.month)):
        lines.append(
            (
                f"{label} ({period.name})",
                f"{period.input_tokens} in + {period.output_tokens} out = "
                f"{period.total_tokens} tokens, {period.requests} requests; "
                f"resets {_utc(str(period.resets_at))}",
            )
        )
    return "\n".join(f"{name + ':':<24}{value}" for name, value in lines)


def cmd_reset_usage(
    client: SyncRedis, args: argparse.Namespace
) -> dict[str, Any] | str:
    day = args.day or not args.month
    month = args.month or not args.day
    removed = reset_usage(client, args.user, day=day, month=month)
    which = " and ".join(name for name, on in (("day", day), ("month", month)) if on)
    if args.json:
        return {
            "user": args.user,
            "reset": which.split(" and "),
            "changed": removed > 0,
        }
    return f"Reset the {which} token usage of {args.user}."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subgate-admin",
        description="Inspect and lift Subgate's bans, blocks and revocations in Redis "
        "(REDIS_URL, REDIS_CLUSTER from the environment or .env).",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)

    bans = commands.add_parser("bans", help="list users with strikes, blocks or bans")
    bans.add_argument("--banned", action="store_true", help="only banned users")
    bans.set_defaults(run=cmd_bans)
    for name, run, text in (
        ("show", cmd_show, "everything Redis holds about one user"),
        ("unban", cmd_unban, "lift a ban and clear the strikes"),
        ("unblock", cmd_unblock, "lift a block, empty the request windows"),
        ("revoked", cmd_revoked, "list a user's revoked purchases"),
        ("restore", cmd_restore, "un-revoke one purchase of a user"),
        ("usage", cmd_usage, "a user's token usage today and this month"),
        ("reset-usage", cmd_reset_usage, "forget a user's token usage (budget reset)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("user", help="user id, e.g. acct:<uuid> or txn:<id>")
        if name == "restore":
            command.add_argument("otid", help="originalTransactionId")
        if name == "reset-usage":
            command.add_argument("--day", action="store_true", help="only today's")
            command.add_argument(
                "--month", action="store_true", help="only the month's"
            )
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `subgate-admin` and `python -m shared.admin`."""
    args = _parser().parse_args(argv)
    try:
        url, cluster = load_redis_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        client = create_sync_redis(url, cluster=cluster)
        result = args.run(client, args)
        client.close()
    except REDIS_ERRORS as exc:
        print(f"Redis is unreachable ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result)
    else:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
