"""The registry client against the real distribution 2.8 and the in-process simulator, each with Basic and
Bearer-token authentication: pushing and reading images, index resolution, tag listing, Korifi's delete,
and every failure a reconciler has to tell apart."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import anyio.abc
import pytest
from aiohttp import web

from service.registry import (
    InvalidImage,
    Keychain,
    NotFound,
    RegistryClient,
    RegistryTimeout,
    Unauthorized,
    UnexpectedResponse,
    Unreachable,
    media,
    tags_of_build_tags,
)
from service.registry.auth import Credentials
from service.registry.client import parse_challenge
from simcluster.registry import OciRegistry, running_registry
from tests.registry.conftest import PASSWORD, USER, Backend, client_for, deadline, free_port

pytestmark = pytest.mark.anyio

BUILD_METADATA = {
    "processes": [
        {"type": "web", "command": "bundle exec rackup", "args": ["-p", "8080"], "direct": False},
        {"type": "worker", "command": "bundle exec sidekiq", "args": []},
    ]
}


def droplet_config(ports: list[str] | None = None, user: str = "cnb") -> dict[str, Any]:
    return {
        "config": {
            "User": user,
            "Labels": {"io.buildpacks.build.metadata": json.dumps(BUILD_METADATA), "other": "x"},
            "ExposedPorts": {p: {} for p in (ports if ports is not None else ["8080/tcp", "9090/udp"])},
        }
    }


async def test_push_and_read_config_by_tag_and_digest(any_backend: Backend) -> None:
    repo = any_backend.repo("droplet")
    async with client_for(any_backend) as (client, _):
        with deadline():
            digest = await client.push_image(f"{repo}:b1", droplet_config(), [b"layer one", b"layer two"])
            by_tag = await client.image_config(f"{repo}:b1")
            by_digest = await client.image_config(f"{repo}@{digest}")
            manifest = await client.get_manifest(f"{repo}:b1")
    assert media.is_digest(digest)
    for config in (by_tag, by_digest):
        assert config.digest == digest
        assert json.loads(config.labels["io.buildpacks.build.metadata"]) == BUILD_METADATA
        assert config.labels["other"] == "x"
        assert config.exposed_ports == [8080, 9090]
        assert config.user == "cnb"
        assert config.config["rootfs"]["diff_ids"] == [
            media.sha256_digest(b"layer one"),
            media.sha256_digest(b"layer two"),
        ]
    assert manifest.media_type == media.OCI_MANIFEST
    assert manifest.digest == digest
    assert manifest.index_digest is None
    assert [layer["size"] for layer in manifest.manifest["layers"]] == [9, 9]


async def test_pushing_again_reuses_blobs(backend: Backend) -> None:
    repo = backend.repo()
    async with client_for(backend) as (client, traced):
        with deadline():
            first = await client.push_image(f"{repo}:a", droplet_config(), [b"same layer"])
            uploads = traced.count("POST", "/blobs/uploads/")
            second = await client.push_image(f"{repo}:b", droplet_config(), [b"same layer"])
    assert first == second
    assert uploads == 2  # layer and config
    assert traced.count("POST", "/blobs/uploads/") == uploads  # nothing uploaded the second time


async def test_index_resolves_to_linux_amd64(backend: Backend) -> None:
    repo = backend.repo("multiarch")
    async with client_for(backend) as (client, _):
        with deadline():
            amd64 = await client.push_image(f"{repo}:amd64", droplet_config(["8080/tcp"]), [b"amd64"])
            arm64 = await client.push_image(
                f"{repo}:arm64", {**droplet_config(["9999/tcp"]), "architecture": "arm64"}, [b"arm64"]
            )
            sizes = {d: (await client.head_manifest(f"{repo}@{d}")).size for d in (amd64, arm64)}
            index = {
                "schemaVersion": 2,
                "mediaType": media.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": media.OCI_MANIFEST,
                        "digest": arm64,
                        "size": sizes[arm64],
                        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                    },
                    {
                        "mediaType": media.OCI_MANIFEST,
                        "digest": amd64,
                        "size": sizes[amd64],
                        "platform": {"os": "linux", "architecture": "amd64"},
                    },
                ],
            }
            index_digest = await client.push_manifest(f"{repo}:multi", index, media.OCI_INDEX)
            manifest = await client.get_manifest(f"{repo}:multi")
            config = await client.image_config(f"{repo}@{index_digest}")
    assert manifest.digest == amd64
    assert manifest.index_digest == index_digest
    assert manifest.media_type == media.OCI_MANIFEST
    assert config.digest == amd64
    assert config.exposed_ports == [8080]


async def test_index_without_linux_amd64_is_invalid(backend: Backend) -> None:
    repo = backend.repo("armonly")
    async with client_for(backend) as (client, _):
        with deadline():
            arm64 = await client.push_image(f"{repo}:arm64", {"architecture": "arm64"}, [b"arm"])
            size = (await client.head_manifest(f"{repo}:arm64")).size
            index = {
                "schemaVersion": 2,
                "mediaType": media.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": media.OCI_MANIFEST,
                        "digest": arm64,
                        "size": size,
                        "platform": {"os": "linux", "architecture": "arm64"},
                    }
                ],
            }
            await client.push_manifest(f"{repo}:multi", index, media.OCI_INDEX)
            with pytest.raises(InvalidImage, match="index without a linux/amd64 image"):
                await client.get_manifest(f"{repo}:multi")


async def test_list_tags_follows_pagination(backend: Backend) -> None:
    repo = backend.repo("tags")
    tags = [f"b{i}" for i in range(7)]
    async with client_for(backend) as (client, traced):
        with deadline():
            digest = await client.push_image(f"{repo}:{tags[0]}", droplet_config(), [b"x"])
            await _tag(client, repo, tags[0], *tags[1:])
            listed = await client.list_tags(repo, page_size=3)
    assert sorted(listed) == tags
    assert len(listed) == len(set(listed))
    pages = traced.count("GET", "/tags/list")
    if backend.kind == "sim":
        assert pages == 3  # 3 + 3 + 1, following Link headers
        assert listed == tags
    else:
        assert pages == 1  # distribution 2.8 ignores n and sends everything at once
    assert media.is_digest(digest)


async def _raw(client: RegistryClient, ref: str) -> bytes:
    """The exact bytes of a pushed manifest (to tag it again: same bytes, same digest)."""
    return (await client.get_manifest(ref)).raw


async def _tag(client: RegistryClient, repo: str, source_tag: str, *tags: str) -> None:
    raw = await _raw(client, f"{repo}:{source_tag}")
    for tag in tags:
        await client.push_manifest(f"{repo}:{tag}", raw, media.OCI_MANIFEST)


async def test_delete_requested_tag_then_latest_then_manifest(backend: Backend) -> None:
    """Korifi's usual case: the build's tag and ``latest`` point at the droplet; deleting the build's tag
    leaves only ``latest``, which goes too, and then the manifest. On distribution 2.8 the tag deletes
    fail (no deletion by tag) and it is the manifest deletion that removes both tags."""
    repo = backend.repo("droplets")
    async with client_for(backend) as (client, _):
        with deadline():
            digest = await client.push_image(f"{repo}:b1.20240101.101010", droplet_config(), [b"d1"])
            await _tag(client, repo, "b1.20240101.101010", "latest")
            other = await client.push_image(f"{repo}:b0.20231231.000000", droplet_config(["1/tcp"]), [b"d0"])
            spec_tags = [f"{repo}:b1.20240101.101010", repo]  # Build.spec.tags: port in the host
            result = await client.delete_image(f"{repo}@{digest}", tags_of_build_tags(spec_tags))
            remaining = await client.list_tags(repo)
            with pytest.raises(NotFound):
                await client.get_manifest(f"{repo}@{digest}")
            assert (await client.get_manifest(f"{repo}:b0.20231231.000000")).digest == other
    assert sorted(result.pointing) == ["b1.20240101.101010", "latest"]
    assert result.manifest_deleted
    assert result.remaining == []
    assert remaining == ["b0.20231231.000000"]
    # distribution 2.8 refuses DELETE by tag: both attempts failed, both tags went with the manifest
    assert set(result.failed_tags) == {"b1.20240101.101010", "latest"}
    assert all("DIGEST_INVALID" in why for why in result.failed_tags.values())
    assert result.deleted_tags == []


async def test_delete_keeps_manifest_another_tag_points_at(backend: Backend) -> None:
    repo = backend.repo("shared")
    async with client_for(backend) as (client, _):
        with deadline():
            digest = await client.push_image(f"{repo}:b1", droplet_config(), [b"shared"])
            await _tag(client, repo, "b1", "keep", "latest")
            result = await client.delete_image(f"{repo}@{digest}", ["b1"])
            manifest = await client.get_manifest(f"{repo}:keep")
    assert not result.manifest_deleted
    assert sorted(result.remaining) == ["keep", "latest"]
    assert manifest.digest == digest


async def test_delete_ignores_requested_tags_of_other_images(backend: Backend) -> None:
    repo = backend.repo("others")
    async with client_for(backend) as (client, _):
        with deadline():
            mine = await client.push_image(f"{repo}:mine", droplet_config(), [b"mine"])
            theirs = await client.push_image(f"{repo}:theirs", droplet_config(["1/tcp"]), [b"theirs"])
            result = await client.delete_image(f"{repo}@{mine}", ["theirs"])
            assert (await client.get_manifest(f"{repo}:theirs")).digest == theirs
    assert result.pointing == ["mine"]
    assert result.remaining == ["mine"]
    assert result.failed_tags == {}
    assert not result.manifest_deleted


async def test_delete_untagged_manifest_and_tolerate_missing(backend: Backend) -> None:
    repo = backend.repo("untagged")
    async with client_for(backend) as (client, _):
        with deadline():
            await client.push_image(f"{repo}:keep", droplet_config(["1/tcp"]), [b"keep"])
            digest = await client.push_image(f"{repo}:gone", droplet_config(), [b"gone"])
            raw = await _raw(client, f"{repo}:gone")
            await client.delete_manifest(repo, digest)  # untags "gone" too
            assert await client.list_tags(repo) == ["keep"]
            again = await client.push_manifest(f"{repo}@{digest}", raw, media.OCI_MANIFEST)
            first = await client.delete_image(f"{repo}@{digest}")
            second = await client.delete_image(f"{repo}@{digest}")
            with pytest.raises(NotFound):
                await client.delete_manifest(repo, digest)
    assert again == digest
    assert first.pointing == [] and first.manifest_deleted and not first.manifest_missing
    assert second.manifest_missing and not second.manifest_deleted


async def test_tag_deletion_where_the_registry_supports_it() -> None:
    """Registries implementing OCI 1.1 tag deletion get Korifi's intended result: the requested tag goes,
    the manifest stays while another tag keeps it."""
    registry = OciRegistry(tag_deletion=True)
    async with running_registry(registry) as r, client_for(_anonymous(r.host)) as (client, _):
        repo = f"{r.host}/app"
        with deadline():
            digest = await client.push_image(f"{repo}:b1", droplet_config(), [b"x"])
            await _tag(client, repo, "b1", "keep", "latest")
            result = await client.delete_image(f"{repo}@{digest}", ["b1"])
    assert result.deleted_tags == ["b1"]
    assert sorted(result.remaining) == ["keep", "latest"]
    assert registry.tags("app") == {"keep": digest, "latest": digest}


def _anonymous(host: str) -> Backend:
    return Backend("sim", "none", host)


async def test_config_cache_avoids_a_second_blob_fetch(backend: Backend) -> None:
    repo = backend.repo("cache")
    async with client_for(backend) as (client, traced):
        with deadline():
            await client.push_image(f"{repo}:b1", droplet_config(), [b"cached"])
            first = await client.image_config(f"{repo}:b1")
            blob_gets = traced.count("GET", "/blobs/sha256:")
            manifest_gets = traced.count("GET", "/manifests/")
            second = await client.get_config(f"{repo}:b1")
            second["config"]["Labels"]["other"] = "mutated"  # each caller gets its own copy
            third = await client.image_config(f"{repo}:b1")
    assert blob_gets == 1
    assert traced.count("GET", "/blobs/sha256:") == 1
    assert traced.count("GET", "/manifests/") == manifest_gets + 2  # the manifest is always read
    assert first.labels == third.labels


async def test_wrong_password_names_the_registry(any_backend: Backend) -> None:
    repo = any_backend.repo()
    async with client_for(any_backend) as (good, _):
        with deadline():
            await good.push_image(f"{repo}:b1", droplet_config(), [b"x"])
    async with client_for(any_backend, keychain=any_backend.keychain("not-the-password")) as (client, _):
        with deadline(), pytest.raises(Unauthorized) as info:
            await client.image_config(f"{repo}:b1")
    message = str(info.value)
    assert any_backend.host in message
    assert "rejected the credentials of user 'alice' (from secret cf/regcred)" in message
    assert "not-the-password" not in message and PASSWORD not in message
    assert "\n" not in message
    if any_backend.auth == "token":
        assert "token server" in message


async def test_anonymous_client_is_told_authentication_is_required(any_backend: Backend) -> None:
    repo = any_backend.repo()
    async with client_for(any_backend, keychain=Keychain()) as (client, _):
        with deadline():
            with pytest.raises(Unauthorized) as info:
                await client.list_tags(repo)
            # the same client, with the credentials of this call's namespace
            await client.push_image(f"{repo}:b1", droplet_config(), [b"x"], keychain=any_backend.keychain())
            assert await client.list_tags(repo, keychain=any_backend.keychain()) == ["b1"]
    message = str(info.value)
    assert f"registry {any_backend.host} requires authentication and no credentials match {repo}" in message
    assert info.value.status == 401


async def test_bearer_tokens_are_cached(token_backend: Backend) -> None:
    repo = token_backend.repo()
    async with client_for(token_backend) as (client, traced):
        with deadline():
            await client.push_image(f"{repo}:b1", droplet_config(), [b"x"])
            before = token_backend.token_requests()
            for _ in range(3):
                await client.image_config(f"{repo}:b1")
            after_reads = token_backend.token_requests()
            await client.list_tags(repo)
    assert after_reads - before == 1  # one pull token (the push,pull one is for another scope), then reused
    assert token_backend.token_requests() == after_reads
    assert traced.count("GET", "/manifests/") == 3  # and no request needed a second try


async def test_unknown_image_and_repository_are_not_found(backend: Backend) -> None:
    repo = backend.repo()
    async with client_for(backend) as (client, _):
        with deadline():
            await client.push_image(f"{repo}:b1", droplet_config(), [b"x"])
            with pytest.raises(NotFound) as tag_info:
                await client.image_config(f"{repo}:nope")
            with pytest.raises(NotFound) as repo_info:
                await client.list_tags(backend.repo("never-pushed"))
            with pytest.raises(NotFound) as digest_info:
                await client.get_manifest(f"{repo}@sha256:{'0' * 64}")
    assert tag_info.value.code == "MANIFEST_UNKNOWN"
    assert (
        str(tag_info.value)
        == f"image {repo}:nope not found (404 Not Found: MANIFEST_UNKNOWN: manifest unknown)"
    )
    assert repo_info.value.code == "NAME_UNKNOWN"
    assert "repository name not known to registry" in str(repo_info.value)
    assert digest_info.value.code == "MANIFEST_UNKNOWN"


async def test_bad_exposed_port_fails_like_korifi(backend: Backend) -> None:
    repo = backend.repo()
    async with client_for(backend) as (client, _):
        with deadline():
            await client.push_image(f"{repo}:zero", droplet_config(["0/tcp"]), [b"x"])
            await client.push_image(f"{repo}:text", droplet_config(["http"]), [b"x"])
            with pytest.raises(InvalidImage, match="0 is not a valid port number"):
                await client.image_config(f"{repo}:zero")
            with pytest.raises(InvalidImage, match='parsing "http": invalid syntax'):
                await client.image_config(f"{repo}:text")


async def test_nothing_listening_is_unreachable() -> None:
    host = f"127.0.0.1:{free_port()}"
    async with RegistryClient(timeout=5, connect_timeout=1) as client:
        started = time.monotonic()
        with deadline(5), pytest.raises(Unreachable) as info:
            await client.get_manifest(f"{host}/app:latest")
    assert time.monotonic() - started < 4
    message = str(info.value)
    assert message == f"registry {host} is unreachable: https: connection refused; http: connection refused"
    assert info.value.temporary


async def test_a_registry_that_never_answers_times_out() -> None:
    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        async with RegistryClient(timeout=0.6, connect_timeout=0.2) as client:
            started = time.monotonic()
            with deadline(5), pytest.raises(RegistryTimeout) as info:
                await client.image_config(f"127.0.0.1:{port}/app:latest")
            elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert 0.5 < elapsed < 3
    assert str(info.value).startswith(f"registry 127.0.0.1:{port} did not answer within 0.6s (GET /v2/")
    assert info.value.temporary


async def test_digest_mismatch_is_invalid_image() -> None:
    """A registry serving other bytes than the digest asked for must not be believed."""
    registry = OciRegistry()
    async with running_registry(registry) as r, RegistryClient() as client:
        with deadline():
            digest = await client.push_image(f"{r.host}/app:v1", droplet_config(), [b"x"])
            registry.blobs[digest] = registry.blobs[digest].replace(
                b'"schemaVersion":2', b'"schemaVersion": 2'
            )
            with pytest.raises(InvalidImage, match="has digest"):
                await client.get_manifest(f"{r.host}/app@{digest}")
            with pytest.raises(
                InvalidImage, match=f"registry says the manifest digest is {digest} but it is"
            ):
                await client.get_manifest(f"{r.host}/app:v1")


async def test_scheme_is_probed_again_after_a_connection_failure() -> None:
    """A registry that may be plain HTTP is pinged (HTTPS, then HTTP) once; after it was unreachable the
    next operation pings again instead of trusting what it learnt before."""
    port = free_port()
    traced_client = client_for(_anonymous(f"127.0.0.1:{port}"))
    async with traced_client as (client, traced):
        with deadline():
            async with running_registry(port=port) as r:
                await client.push_image(f"{r.host}/app:v1", droplet_config(), [b"x"])
                await client.get_manifest(f"{r.host}/app:v1")
            assert traced.count("GET", "/v2/") - traced.count("GET", "/v2/app") == 2  # https, then http
            with pytest.raises(Unreachable):
                await client.get_manifest(f"{r.host}/app:v1")
            async with running_registry(port=port) as r:
                with pytest.raises(NotFound):  # a fresh, empty registry on the same port
                    await client.get_manifest(f"{r.host}/app:v1")
    pings = [path for method, path in traced.requests if method == "GET" and path == "/v2/"]
    assert len(pings) == 4  # a pair at first; none for the failed request; a new pair after the failure


async def test_access_token_field_and_anonymous_pull() -> None:
    registry = OciRegistry(
        auth="token", users={USER: PASSWORD}, token_field="access_token", anonymous_pull=True
    )
    async with running_registry(registry) as r:
        secret_keychain = Backend("sim", "token", r.host).keychain()
        async with RegistryClient(keychain=secret_keychain) as writer:
            with deadline():
                await writer.push_image(f"{r.host}/public:v1", droplet_config(), [b"x"])
        async with RegistryClient() as reader:
            with deadline():
                config = await reader.image_config(f"{r.host}/public:v1")
                with pytest.raises(Unauthorized, match="requires authentication"):
                    await reader.push_image(f"{r.host}/public:v2", droplet_config(), [b"y"])
    assert config.exposed_ports == [8080, 9090]


async def test_registry_token_credentials_are_sent_as_bearer() -> None:
    registry = OciRegistry(auth="token", users={USER: PASSWORD})
    async with running_registry(registry) as r:
        async with RegistryClient(keychain=Backend("sim", "token", r.host).keychain()) as writer:
            with deadline():
                await writer.push_image(f"{r.host}/app:v1", droplet_config(), [b"x"])
        token = next(iter(registry.grants))
        keychain = Keychain([(r.host, Credentials(registry_token=token))])
        async with RegistryClient(keychain=keychain) as client:
            with deadline():
                assert (await client.image_config(f"{r.host}/app:v1")).user == "cnb"
    assert registry.requests[("GET", "token")] == 1  # only the writer's push,pull token


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        ('Basic realm="test-realm"', "basic", {"realm": "test-realm"}),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/ubuntu:pull",
            },
        ),
        ('bearer Realm=unquoted, Service="a\\"b"', "bearer", {"realm": "unquoted", "service": 'a"b'}),
        (
            'Bearer realm="x",error="insufficient_scope"',
            "bearer",
            {"realm": "x", "error": "insufficient_scope"},
        ),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    challenge = parse_challenge(header)
    assert challenge is not None
    assert challenge.scheme == scheme
    assert dict(challenge.params) == params


def test_manifest_media_types_are_all_accepted() -> None:
    assert set(media.MANIFEST_ACCEPT.split(", ")) == {
        media.OCI_MANIFEST,
        media.OCI_INDEX,
        media.DOCKER_MANIFEST,
        media.DOCKER_MANIFEST_LIST,
    }


async def test_odd_registry_answers() -> None:
    """What real registries sometimes send: errors with multi-line messages, 403s, schema 1 manifests,
    and next-page links to other hosts (which must not be followed)."""

    async def handler(request: web.Request) -> web.Response:
        path = request.path
        if path == "/v2/":
            return web.json_response({})
        if path == "/v2/broken/manifests/x":
            body = {"errors": [{"code": "UNKNOWN", "message": "storage\nfailure"}]}
            return web.json_response(body, status=500)
        if path == "/v2/denied/tags/list":
            body = {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}
            return web.json_response(body, status=403)
        if path == "/v2/old/manifests/x":
            return web.Response(body=b'{"schemaVersion":1}', content_type=media.DOCKER_SCHEMA1_SIGNED)
        if path == "/v2/linky/tags/list":
            link = '<http://elsewhere.example/v2/linky/tags/list?n=1&last=a>; rel="next"'
            return web.json_response({"name": "linky", "tags": ["a"]}, headers={"Link": link})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host = f"127.0.0.1:{runner.addresses[0][1]}"
        async with RegistryClient() as client:
            with deadline():
                with pytest.raises(UnexpectedResponse) as broken:
                    await client.get_manifest(f"{host}/broken:x")
                with pytest.raises(Unauthorized) as denied:
                    await client.list_tags(f"{host}/denied")
                with pytest.raises(InvalidImage, match="schema 1"):
                    await client.get_manifest(f"{host}/old:x")
                with pytest.raises(UnexpectedResponse, match="next-page link to another host"):
                    await client.list_tags(f"{host}/linky")
    finally:
        await runner.cleanup()
    assert str(broken.value) == (
        f"registry {host} answered GET /v2/broken/manifests/x with 500 Internal Server Error: "
        "UNKNOWN: storage failure"
    )
    assert broken.value.status == 500 and broken.value.code == "UNKNOWN" and broken.value.temporary
    assert denied.value.status == 403
    assert f"registry {host} denied no username access to {host}/denied" in str(denied.value)
