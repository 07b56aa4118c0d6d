"""Two gateways on one stack, measured in alternating turns: this checkout's (A) and a
variant (B) with other settings, another checkout, or another Python.

    .venv/bin/python -m bench.compare --env LOG_LEVEL=warning
    .venv/bin/python -m bench.compare --code ../subgate-before
    .venv/bin/python -m bench.compare --python /path/to/venv-3.13/bin/python
                                      [--rounds 6] [--seconds 3] [--streams-only]

This VM's speed drifts by tens of percent within the hour, so two builds measured in
separate `make bench` runs cannot be told apart. Here both serve the same fakes and
Redis, every round runs A and B back to back (in alternating order), and the figures
are per variant over all rounds: requests/s at 50 connections (median of the rounds,
and every round), p50 at one connection, the first byte and total time of a 200-event
stream written at once, and the first byte of a paced one. Needs what `make bench`
needs (wrk only without --streams-only). A gateway that answers any of the load with
errors stops the run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import loadgen
from bench.loadgen import Target
from bench.run import TOKENS, answers_logged, request_targets, stream_targets
from bench.stack import Stack, raise_open_file_limit
from shared.settings import Settings
from tests.support.processes import REPO, ServiceProcess, start_gateway

SUITES = ("openai", "claude")
STREAMS_PER_TURN = 20
PACED_PER_TURN = 6  # about 0.45 s each
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SETTINGS = {
    name
    for spec in fields(Settings)
    for name in (spec.metadata["env"], spec.metadata["legacy"])
    if name
}


class MeasurementError(Exception):
    """A gateway answered some of the load with errors: its figures mean nothing."""


@dataclass
class Figures:
    """One variant's figures in one suite, over every round."""

    c50_rps: list[float] = field(default_factory=list)
    c1_p50_ms: list[float] = field(default_factory=list)
    burst_ttfb_ms: list[float] = field(default_factory=list)
    burst_total_ms: list[float] = field(default_factory=list)
    paced_ttfb_ms: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float | None]:
        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        return {
            "c50_rps": median(self.c50_rps),
            "c1_p50_ms": median(self.c1_p50_ms),
            "burst_ttfb_ms": median(self.burst_ttfb_ms),
            "burst_total_ms": median(self.burst_total_ms),
            "paced_ttfb_ms": median(self.paced_ttfb_ms),
        }


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` arguments as a dict. ValueError names the first malformed pair, or
    the first name that is neither a Subgate setting nor Python's (`PYTHON...`): a
    misspelt name would compare the gateway with itself under another label."""
    env = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not _ENV_NAME.fullmatch(name):
            raise ValueError(f"not a setting (KEY=VALUE): {pair!r}")
        if name not in SETTINGS and not name.startswith("PYTHON"):
            raise ValueError(f"{name} is not a Subgate setting (see .env.example)")
        env[name] = value
    return env


def turns(rounds: int) -> list[tuple[str, str]]:
    """Who goes first in each round: A, then B, then A again..."""
    return [("A", "B") if index % 2 == 0 else ("B", "A") for index in range(rounds)]


def require_no_errors(name: str, figures: dict[str, Any], log: str) -> None:
    """Raise MeasurementError when wrk saw errors (wrk counts them as requests)."""
    if figures["errors"]:
        raise MeasurementError(
            f"gateway {name} answered {figures['errors']} of {figures['requests']} "
            f"requests with errors ({figures['error_kinds']}); it logged "
            f"{answers_logged(log)}"
        )


def start_variant(
    stack: Stack, env: dict[str, str], code: Path, python: str
) -> ServiceProcess:
    """Gateway B: the bench gateway's settings with `env` on top."""
    return start_gateway(
        stack.workdir,
        {**stack.gateway_env, **env},
        auth_url="http://127.0.0.1:9",
        name="gateway_b",
        python=python,
        cwd=code,
    )


def compare(
    stack: Stack,
    gateways: dict[str, ServiceProcess],
    *,
    rounds: int,
    seconds: int,
    streams_only: bool,
    suites: tuple[str, ...] = SUITES,
    streams: tuple[int, int] = (STREAMS_PER_TURN, PACED_PER_TURN),
) -> dict[str, dict[str, Figures]]:
    """Per suite and variant, the figures of `rounds` alternating rounds."""
    tokens = stack.mint_tokens(TOKENS)
    results: dict[str, dict[str, Figures]] = {}
    for suite in suites:
        request = request_targets(stack)[suite]["gateway"]
        stream = stream_targets(stack)[suite]["gateway"]
        figures = results[suite] = {name: Figures() for name in gateways}
        if not streams_only:
            for gateway in gateways.values():
                loadgen.wrk(_at_port(request, gateway.port), 50, 1, tokens)  # warm-up
        for index, order in enumerate(turns(rounds), 1):
            for name in order:
                gateway, mine = gateways[name], figures[name]
                if not streams_only:
                    target = _at_port(request, gateway.port)
                    busy = _wrk(name, gateway, target, 50, seconds, tokens)
                    mine.c50_rps.append(busy["rps"])
                    quiet = _wrk(name, gateway, target, 1, seconds, tokens)
                    mine.c1_p50_ms.append(quiet["p50_ms"])
                bursts, paced = loadgen.stream_runs(
                    _at_port(stream, gateway.port),
                    tokens[0],
                    runs=streams[0],
                    paced_runs=streams[1],
                    interval_ms=2,
                )
                mine.burst_ttfb_ms += [timing.ttfb_ms for timing in bursts]
                mine.burst_total_ms += [timing.total_ms for timing in bursts]
                mine.paced_ttfb_ms += [timing.ttfb_ms for timing in paced]
            print(f"  {suite}: round {index} of {rounds}", flush=True)
    return results


def _wrk(
    name: str,
    gateway: ServiceProcess,
    target: Target,
    connections: int,
    seconds: int,
    tokens: list[str],
) -> dict[str, Any]:
    start = gateway.log_size()
    figures = loadgen.wrk(target, connections, seconds, tokens)
    require_no_errors(name, figures, gateway.logs_since(start))
    return figures


def _at_port(target: Target, port: int) -> Target:
    parts = urlsplit(target.url)
    url = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
    return Target(target.name, url, target.body, target.auth)


def table(results: dict[str, dict[str, Figures]]) -> str:
    """A Markdown table per suite: A, B and B - A for every figure measured."""
    rows = [
        ("c50_rps", "requests/s at 50 connections (median of rounds)", "{:,.0f}"),
        ("c1_p50_ms", "p50 at 1 connection, ms", "{:.3f}"),
        ("burst_ttfb_ms", "first byte, answer written at once, ms", "{:.3f}"),
        ("burst_total_ms", "total time, answer written at once, ms", "{:.3f}"),
        ("paced_ttfb_ms", "first byte, paced answer, ms", "{:.3f}"),
    ]
    lines = []
    for suite, variants in results.items():
        a, b = variants["A"].medians(), variants["B"].medians()
        lines += [f"\n{suite}", "| figure | A | B | B - A |", "|---|---|---|---|"]
        for key, label, fmt in rows:
            if a[key] is None or b[key] is None:
                continue
            change = b[key] - a[key]
            text = f"{change:+,.0f}" if key == "c50_rps" else f"{change:+.3f}"
            if key == "c50_rps" and a[key]:
                text += f" ({100 * change / a[key]:+.0f} %)"
            lines.append(
                f"| {label} | {fmt.format(a[key])} | {fmt.format(b[key])} | {text} |"
            )
        if variants["A"].c50_rps:
            each = {n: [round(r) for r in v.c50_rps] for n, v in variants.items()}
            lines.append(f"requests/s in each round: A {each['A']}, B {each['B']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--env", nargs="+", action="extend", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--code", type=Path, default=REPO, help="B's checkout")
    parser.add_argument("--python", default=sys.executable, help="B's interpreter")
    parser.add_argument("--rounds", type=int, default=6, help="an even number")
    parser.add_argument("--seconds", type=int, default=3, help="per wrk run")
    parser.add_argument("--streams-only", action="store_true")
    args = parser.parse_args()
    try:
        env = env_pairs(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if not (args.code / "gateway_service").is_dir():
        parser.error(f"--code {args.code}: no gateway_service/ in it")
    python = os.path.abspath(args.python)  # B starts in --code, not here
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        parser.error(f"--python {args.python}: not an executable file")
    if args.rounds < 2 or args.rounds % 2:
        parser.error("--rounds must be even (A and B go first equally often)")
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")

    raise_open_file_limit()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        stack = Stack(Path(tmp))
        variant = None
        try:
            stack.start()
            variant = start_variant(stack, env, args.code.resolve(), python)
            assert stack.gateway is not None
            print(f"A: {REPO} ({sys.executable})")
            print(f"B: {args.code.resolve()} ({python}) {' '.join(args.env)}")
            results = compare(
                stack,
                {"A": stack.gateway, "B": variant},
                rounds=args.rounds,
                seconds=args.seconds,
                streams_only=args.streams_only,
            )
        except MeasurementError as exc:
            sys.exit(f"bench.compare: {exc}")
        finally:
            if variant is not None:
                variant.stop()
            stack.stop()
    print(table(results))


if __name__ == "__main__":
    main()
