"""Where one gateway worker spends its time under load: py-spy samples the gateway while
wrk drives it, then the stacks are summed per function.

    .venv/bin/python -m bench.profile [--suite openai|claude] [--seconds 10]
                                      [--connections 50]

Prints the functions with the most samples on top of the stack (self) and anywhere
on it (inclusive), as shares of the event loop thread's non-idle samples; writes the
raw collapsed stacks next to `--out` for flame graph tools.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench import loadgen
from bench.run import TOKENS, request_targets
from bench.stack import Stack, raise_open_file_limit


def summarize(collapsed: str, top: int = 25) -> str:
    """Self and inclusive shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        if "threading.py" in frames[0]:
            continue  # another thread (the metrics server), waiting in select
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples of the event loop thread"]
    for title, counter in (("self", own), ("inclusive", inclusive)):
        lines.append(f"\n{title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`function (path:line)` as `function (module path)`, without the line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=("openai", "claude"), default="openai")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--out", default="bench/results/profile")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit(
            "bench.profile needs py-spy: "
            ".venv/bin/pip install -c requirements.lock py-spy"
        )
    raise_open_file_limit()
    with tempfile.TemporaryDirectory(prefix="subgate-profile-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            tokens = stack.mint_tokens(TOKENS)
            target = request_targets(stack)[args.suite]["gateway"]
            loadgen.wrk(target, args.connections, 2, tokens)  # warm-up
            raw = Path(f"{args.out}-{args.suite}.txt")
            raw.parent.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(stack.gateway_pid), "--rate", "250",
                 "--duration", str(args.seconds), "--format", "raw",
                 "--output", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            figures = loadgen.wrk(target, args.connections, args.seconds, tokens)
            spy.wait(args.seconds + 30)
        finally:
            stack.stop()
    rps, connections = figures["rps"], args.connections
    print(f"{args.suite} gateway under py-spy: {rps:.0f} req/s at c{connections}")
    print(summarize(raw.read_text()))


if __name__ == "__main__":
    main()
