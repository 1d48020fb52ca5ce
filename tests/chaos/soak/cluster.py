"""The soak's own client of the cluster: API calls retried through the injected faults, the emulator's
``/__sim__`` controls, and workloads created and deleted with the time recorded.

Design: the faults the soak injects hit every client alike, the harness's too, so its calls retry the
transient answers (and the injected conflicts) for up to 30 s instead of failing the run; an error that
is not transient is raised to the caller (a chaos action records it as a harness failure). A workload's
creation and deletion are recorded here, where they happen, since the checks and the figures time
everything from them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import anyio

from service.kube import errors
from service.kube import resources as r
from service.kube.client import KubeClient
from tests.chaos.soak.record import Record
from tests.chaos.soak.scenario import Obj, Workload

T = TypeVar("T")

TRANSIENT_CODES = frozenset({0, 410, 429, 500, 502, 503, 504})


class Cluster:
    def __init__(
        self,
        record: Record,
        client: KubeClient,
        http: aiohttp.ClientSession,
        api_url: str,
        registry_host: str,
    ) -> None:
        self.record = record
        self.client = client
        self.http = http
        self.api_url = api_url
        self.registry_host = registry_host

    async def api(self, call: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
        """A harness call, retried through the faults the soak injects (they hit every client alike)."""
        deadline = time.monotonic() + within
        delay = 0.05
        while True:
            try:
                return await call()
            except errors.ApiError as exc:
                injected = exc.code == 409 and "injected" in exc.message
                if (exc.code not in TRANSIENT_CODES and not injected) or time.monotonic() > deadline:
                    raise
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def create_workload(self, w: Workload) -> None:
        # AlreadyExists: an earlier attempt got through before its answer was lost.
        with contextlib.suppress(errors.AlreadyExists):
            await self.api(lambda: self.client.create(r.BUILD_WORKLOAD, w.body(self.registry_host)))
        self.record.created[w.name] = self.record.now()

    async def get_workload(self, w: Workload) -> Obj | None:
        try:
            return await self.api(lambda: self.client.get(r.BUILD_WORKLOAD, w.name, w.namespace))
        except errors.NotFound:
            return None

    async def delete_workload(self, w: Workload, how_far: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await self.api(lambda: self.client.delete(r.BUILD_WORKLOAD, w.name, w.namespace))
        self.record.deleted_at[w.name] = self.record.now()
        self.record.deleted_while[w.name] = how_far

    async def sim(self, method: str, path: str, body: Obj | None = None) -> Any:
        """The emulator's ``/__sim__`` controls."""
        async with self.http.request(method, self.api_url + path, json=body) as resp:
            payload = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {payload}")
            return payload
