"""``python -m simcluster kpack`` as a process of its own against a real cluster, for the block: started,
waited for until its webhooks are in use (the line it prints then), stopped with SIGTERM at the end, which
must end it cleanly (exit 0, its webhook configurations removed)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.helpers import child_env

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "kpack simulator running against"


@dataclass
class Simulator:
    process: Process
    log: list[str] = field(default_factory=list)
    webhooks: str = ""  # the base URL kube-apiserver calls, as the process announced it

    def tail(self) -> str:
        return "\n".join(self.log[-40:])


@asynccontextmanager
async def kpack_process(
    kubeconfig: Path, registry_url: str, *, build_seconds: float = 0.05
) -> AsyncIterator[Simulator]:
    process = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "simcluster",
            "kpack",
            f"--kubeconfig={kubeconfig}",
            f"--registry={registry_url}",
            f"--build-seconds={build_seconds}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=ROOT,
    )
    sim = Simulator(process)
    ready = anyio.Event()

    async def read_log() -> None:
        assert process.stderr is not None
        lines = BufferedByteReceiveStream(process.stderr)
        try:
            while True:
                sim.log.append((await lines.receive_until(b"\n", 1 << 20)).decode(errors="replace"))
                if READY_LINE in sim.log[-1]:
                    sim.webhooks = sim.log[-1].split(": webhooks ", 1)[1].split(" ", 1)[0]
                    ready.set()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            ready.set()  # it ended: the check below says how

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_log)
        try:
            with anyio.fail_after(60):
                await ready.wait()
            # Not "the last line is the ready one": the simulator may log more before this task runs.
            assert process.returncode is None and sim.webhooks, sim.tail()
            yield sim
        finally:
            if process.returncode is None:
                process.terminate()
            with anyio.fail_after(30):
                code = await process.wait()
        assert code == 0, sim.tail()
        assert sim.log[-1].endswith("stopped (webhook configurations removed)"), sim.tail()
