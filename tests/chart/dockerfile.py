"""The repository's Dockerfile, read as data: what the image's user, port, command and paths are,
so the chart's tests can hold the chart to the image it runs (no Docker engine builds it here)."""

import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache

from tests.testbed import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


@dataclass(frozen=True)
class Image:
    uid: int
    gid: int
    port: int
    workdir: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, args = whole.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


@cache
def dockerfile() -> Image:
    steps = instructions(DOCKERFILE.read_text())
    env: dict[str, str] = {}
    users, ports, workdirs, cmds, runs = [], [], [], [], []
    for name, args in steps:
        if name == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(args)))
        elif name == "USER":
            users.append(args)
        elif name == "EXPOSE":
            ports.append(args)
        elif name == "WORKDIR":
            workdirs.append(args)
        elif name == "CMD":
            cmds.append(json.loads(args))
        elif name == "RUN":
            runs.append(args)
    user = users[-1]
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user!r} must be numeric uid:gid, so the kubelet can verify runAsNonRoot"
    return Image(
        uid=int(match[1]),
        gid=int(match[2]),
        port=int(ports[-1].split("/")[0]),
        workdir=workdirs[-1],
        cmd=cmds[-1],
        env=env,
        runs=runs,
    )
