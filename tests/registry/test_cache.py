"""The client's one cache object: bounded, least recently used first out, and injectable — a cache shared by
two clients saves the second one the probe and the token exchange, a small one forgets configs."""

from __future__ import annotations

import pytest

from service.registry.cache import BoundedCache, RegistryCache
from tests.registry.conftest import Backend, client_for, deadline

pytestmark = pytest.mark.anyio


def test_bounded_cache_forgets_the_least_recently_used() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    cache.pop("a")
    cache.pop("missing")
    assert len(cache) == 1


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache: BoundedCache[str, int] = BoundedCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0


async def test_a_shared_cache_saves_the_probe_and_the_token(sim_token: Backend) -> None:
    repo = sim_token.repo()
    shared = RegistryCache()
    async with client_for(sim_token, cache=shared) as (first, _):
        with deadline():
            await first.push_image(f"{repo}:b1", {"config": {"User": "cnb"}}, [b"x"])
            await first.image_config(f"{repo}:b1")
    tokens = sim_token.token_requests()
    async with client_for(sim_token, cache=shared) as (second, traced):
        with deadline():
            config = await second.image_config(f"{repo}:b1")
    assert config.user == "cnb"
    assert ("GET", "/v2/") not in traced.requests  # no ping: the base URL was known
    assert traced.count("GET", "/blobs/") == 0  # the config came from the cache
    assert sim_token.token_requests() == tokens


async def test_a_small_config_cache_forgets(backend: Backend) -> None:
    repo = backend.repo("small-cache")
    async with client_for(backend, cache=RegistryCache(configs=1)) as (client, traced):
        with deadline():
            await client.push_image(f"{repo}:a", {"config": {"User": "a"}}, [b"a"])
            await client.push_image(f"{repo}:b", {"config": {"User": "b"}}, [b"b"])
            for tag in ("a", "b", "b", "a"):
                assert (await client.image_config(f"{repo}:{tag}")).user == tag
    assert traced.count("GET", "/blobs/") == 3  # a, b, then a again (b was the one remembered)
