"""The in-process registry bounds what it remembers, so a long-running demo or devcluster does not grow:
token grants expire and are capped, and only the last failed uploads are remembered."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from service.registry import media
from simcluster.registry import OciRegistry, running_registry
from tests.registry.conftest import PASSWORD, USER

pytestmark = pytest.mark.anyio

BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


async def token(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(
        f"{url}/token", params={"scope": "repository:app:pull,push"}, headers={"Authorization": BASIC}
    ) as resp:
        assert resp.status == 200
        value: str = (await resp.json())["token"]
        return value


async def pull_status(session: aiohttp.ClientSession, url: str, bearer: str) -> int:
    async with session.get(f"{url}/v2/app/tags/list", headers={"Authorization": f"Bearer {bearer}"}) as resp:
        return resp.status


async def test_grants_are_capped_oldest_first() -> None:
    registry = OciRegistry(auth="token", users={USER: PASSWORD}, max_grants=3)
    async with running_registry(registry) as r, aiohttp.ClientSession() as session:
        tokens = [await token(session, r.url) for _ in range(5)]
        assert list(registry.grants) == tokens[2:]
        assert await pull_status(session, r.url, tokens[0]) == 401  # dropped: invalid_token
        assert await pull_status(session, r.url, tokens[-1]) == 404  # valid (the repository is unknown)


async def test_expired_grants_are_forgotten() -> None:
    registry = OciRegistry(auth="token", users={USER: PASSWORD}, token_ttl=0)
    async with running_registry(registry) as r, aiohttp.ClientSession() as session:
        expired = [await token(session, r.url) for _ in range(3)]
        assert list(registry.grants) == expired[-1:]  # each new grant drops the expired ones before it
        assert await pull_status(session, r.url, expired[-1]) == 401
        assert registry.grants == {}  # an expired token that is presented goes too
        registry.token_ttl = 300
        fresh = await token(session, r.url)
        assert list(registry.grants) == [fresh]


async def test_only_the_last_failed_uploads_are_remembered() -> None:
    registry = OciRegistry(max_failed_uploads=2)
    wrong = media.sha256_digest(b"something else")
    async with running_registry(registry) as r, aiohttp.ClientSession() as session:
        locations = []
        for _ in range(3):
            async with session.post(f"{r.url}/v2/app/blobs/uploads/") as resp:
                assert resp.status == 202
                location = resp.headers["Location"]
            async with session.put(location, params={"digest": wrong}, data=b"data") as resp:
                assert resp.status == 400
            locations.append(location)
        assert len(registry.failed_uploads) == 2
        codes = []
        for location in locations:
            async with session.get(location) as resp:
                codes.append((resp.status, (await resp.json())["errors"][0]["code"]))
    assert codes == [
        (404, "BLOB_UPLOAD_UNKNOWN"),  # forgotten
        (404, "BLOB_UPLOAD_INVALID"),
        (404, "BLOB_UPLOAD_INVALID"),
    ]
