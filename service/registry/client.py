"""The registry operations the controller needs, as go-containerregistry's ``pkg/v1/remote`` offers them
over its ``transport``: read an image's config (labels, ports, user) to build a droplet, and delete a
droplet image when its Build goes.

Each public method is one operation: it resolves the call's credentials, runs under one deadline
(``timeout``) and says, request by request, what answer it wants; how requests reach the registry is the
transport's business (``service.registry.transport``), and what the client remembers between operations
is one injectable ``RegistryCache``. Korifi's delete algorithm (``deletion``) and the image upload the
simulator and tests need (``push``) have their own modules; this class stays their entry point so that
callers hold one object with one connection pool.

Behaviour kept from go-containerregistry, because Korifi's results depend on it: manifests are fetched
with all four OCI/Docker manifest and index types accepted; an index resolves to its first linux/amd64
entry (an entry without a platform counts as linux/amd64); manifest and config digests are verified; tag
lists follow ``Link`` pagination only to the same registry.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import orjson
from yarl import URL

from service.registry import media, push
from service.registry.auth import ANONYMOUS, Keychain
from service.registry.cache import RegistryCache
from service.registry.deletion import DeleteResult, delete_image
from service.registry.errors import InvalidImage, UnexpectedResponse, one_line
from service.registry.metrics import RegistryMetrics
from service.registry.reference import Reference, Repository, as_reference, as_repository
from service.registry.transport import (
    USER_AGENT,
    Challenge,
    Operation,
    Reply,
    Transport,
    parse_challenge,
    pick_challenge,
)

MAX_MANIFEST = 4 * 1024 * 1024  # distribution's own limit on a manifest body
MAX_CONFIG = 32 * 1024 * 1024
MAX_INDEX_DEPTH = 4
MAX_TAG_PAGES = 10_000


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a manifest HEAD tells: its digest, media type and size."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest. When the reference named an index, this is its linux/amd64 entry and
    ``index_digest`` is the index's digest."""

    reference: Reference
    digest: str
    media_type: str
    manifest: dict[str, Any]
    raw: bytes = field(repr=False)
    index_digest: str | None = None

    @property
    def config_digest(self) -> str:
        config = self.manifest.get("config")
        digest = config.get("digest") if isinstance(config, dict) else None
        if not isinstance(digest, str) or not media.is_digest(digest):
            raise InvalidImage(f"image {self.reference} has a manifest without a valid config digest")
        return digest


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config Korifi reads. ``exposed_ports`` keeps the config's key order (Go's
    map order was random) and, like Korifi, one entry per key (``8080/tcp`` and ``8080/udp`` give two)."""

    digest: str
    labels: dict[str, str]
    exposed_ports: list[int]
    user: str
    config: dict[str, Any] = field(repr=False)
    size: int = 0  # bytes of the config and every layer, as the manifest gives them


def _image_size(manifest: dict[str, Any]) -> int:
    parts = [manifest.get("config"), *(manifest.get("layers") or ())]
    return sum(p["size"] for p in parts if isinstance(p, dict) and isinstance(p.get("size"), int))


def _image_name(repo: Repository, identifier: str) -> str:
    return f"{repo.name}@{identifier}" if media.is_digest(identifier) else f"{repo.name}:{identifier}"


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip()


def _parse_port(key: str) -> int:
    """Korifi: the part before any ``/``, through ``net.ParsePort(p, false)`` (``strconv.ParseUint``
    base 10, 16 bits; 0 refused)."""
    port = key.split("/")[0]
    if not port or not port.isascii() or not port.isdigit():
        raise ValueError(f'strconv.ParseUint: parsing "{port}": invalid syntax')
    value = int(port)
    if value > 65535:
        raise ValueError(f'strconv.ParseUint: parsing "{port}": value out of range')
    if value == 0:
        raise ValueError("0 is not a valid port number")
    return value


class RegistryClient:
    """One connection pool for all registries; use as ``async with RegistryClient(...) as client``.

    ``keychain`` is the default for every call (each call may pass its own: credentials depend on the
    namespace and service account of the object being reconciled). ``insecure_registries`` lists
    ``host[:port]`` names that may be reached over plain HTTP. ``timeout`` bounds each metadata operation
    and ``transfer_timeout`` each push; ``connect_timeout`` bounds each TCP+TLS connect (and the HTTPS
    probe of a registry that may be plain HTTP). ``cache`` is what the client remembers between
    operations; by default a ``RegistryCache`` of ``config_cache_size`` configs and ``token_cache_size``
    tokens. ``metrics``, when given, counts every HTTP exchange (``service.registry.metrics``);
    ``on_request``, when given, is called with the method and path of each, as it starts."""

    def __init__(
        self,
        *,
        keychain: Keychain | None = None,
        insecure_registries: Collection[str] = (),
        timeout: float = 30.0,
        transfer_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        max_connections: int = 32,
        max_connections_per_host: int = 8,
        ssl_context: Any = None,
        config_cache_size: int = 256,
        token_cache_size: int = 1024,
        tag_page_size: int = 1000,
        tag_lookup_concurrency: int = 4,
        user_agent: str = USER_AGENT,
        on_request: Callable[[str, str], object] | None = None,
        cache: RegistryCache | None = None,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self.keychain = keychain if keychain is not None else Keychain()
        self.timeout = timeout
        self.transfer_timeout = transfer_timeout
        self.tag_page_size = tag_page_size
        self.cache = (
            cache if cache is not None else RegistryCache(configs=config_cache_size, tokens=token_cache_size)
        )
        self.transport = Transport(
            cache=self.cache,
            insecure_registries=insecure_registries,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            max_connections_per_host=max_connections_per_host,
            ssl_context=ssl_context,
            user_agent=user_agent,
            on_request=on_request,
            metrics=metrics,
        )
        self._tag_lookup_concurrency = max(1, tag_lookup_concurrency)

    @property
    def insecure_registries(self) -> frozenset[str]:
        return self.transport.insecure_registries

    @property
    def connect_timeout(self) -> float:
        return self.transport.connect_timeout

    # ------------------------------------------------------------------------------- lifecycle
    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> Self:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.transport.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------------------ operations
    def _operation(
        self,
        repository: Repository,
        keychain: Keychain | None,
        operation_timeout: float | None,
        target: str = "",
    ) -> AbstractAsyncContextManager[Operation]:
        limit = self.timeout if operation_timeout is None else operation_timeout
        creds = (keychain if keychain is not None else self.keychain).resolve(repository)
        return self.transport.operation(repository.registry, creds, target or repository.name, limit)

    async def get_manifest(
        self,
        ref: Reference | str,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> Manifest:
        """The image manifest of ``ref`` (for an index, its linux/amd64 entry), digest verified.

        Raises ``NotFound`` for an unknown image, ``InvalidImage`` for content that is not a usable
        image, and the transport errors of ``service.registry.errors``."""
        ref = as_reference(ref)
        async with self._operation(ref.repository, keychain, operation_timeout, ref.name) as op:
            return await self._get_manifest(op, ref)

    async def head_manifest(
        self,
        ref: Reference | str,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> Descriptor:
        """The digest, media type and size of the manifest ``ref`` names (no index resolution)."""
        ref = as_reference(ref)
        async with self._operation(ref.repository, keychain, operation_timeout, ref.name) as op:
            return await self._head_manifest(op, ref.repository, ref.identifier)

    async def get_config(
        self,
        ref: Reference | str,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> dict[str, Any]:
        """The image config JSON of ``ref`` (a fresh dict each call). Config blobs are cached by
        registry, repository and digest, so asking again costs only the manifest request."""
        ref = as_reference(ref)
        async with self._operation(ref.repository, keychain, operation_timeout, ref.name) as op:
            manifest = await self._get_manifest(op, ref)
            return await self._get_config(op, ref, manifest.config_digest)

    async def image_config(
        self,
        ref: Reference | str,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> ImageConfig:
        """Labels, exposed ports and user of ``ref``'s config, as Korifi's ``Config`` reads them. A
        malformed exposed port fails the whole call (``InvalidImage``), as in Korifi."""
        ref = as_reference(ref)
        async with self._operation(ref.repository, keychain, operation_timeout, ref.name) as op:
            manifest = await self._get_manifest(op, ref)
            config = await self._get_config(op, ref, manifest.config_digest)
        inner = config.get("config")
        inner = inner if isinstance(inner, dict) else {}
        labels = inner.get("Labels")
        labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        user = inner.get("User")
        exposed = inner.get("ExposedPorts")
        ports: list[int] = []
        for key in exposed if isinstance(exposed, dict) else ():
            try:
                ports.append(_parse_port(str(key)))
            except ValueError as exc:
                raise InvalidImage(
                    f"error getting exposed ports of image {ref}: {exc}", registry=ref.registry.name
                ) from None
        return ImageConfig(
            manifest.digest,
            labels,
            ports,
            user if isinstance(user, str) else "",
            config,
            _image_size(manifest.manifest),
        )

    async def list_tags(
        self,
        repository: Repository | Reference | str,
        *,
        page_size: int | None = None,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> list[str]:
        """All tags of a repository, following ``Link`` pagination (distribution 2.8 ignores ``n`` and
        answers all tags at once, in no particular order)."""
        repo = as_repository(repository)
        async with self._operation(repo, keychain, operation_timeout) as op:
            return await self._list_tags(op, repo, page_size or self.tag_page_size)

    async def delete_manifest(
        self,
        repository: Repository | Reference | str,
        identifier: str,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> None:
        """``DELETE /v2/<repo>/manifests/<identifier>``. Raises ``NotFound`` when the registry does not
        have it (callers deleting droplets tolerate that, as Korifi does)."""
        repo = as_repository(repository)
        async with self._operation(repo, keychain, operation_timeout, f"{repo.name}@{identifier}") as op:
            await self._delete_manifest(op, repo, identifier)

    async def delete_image(
        self,
        ref: Reference | str,
        tags: Iterable[str] = (),
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> DeleteResult:
        """Korifi's ``Client.Delete(ref, tags…)`` (korifi.md 4.1.7): delete each requested tag that points
        at ``ref``, then ``latest`` if it is the only one left, then the manifest if no tag is left. See
        ``service.registry.deletion.delete_image`` for the steps and how distribution 2.8 changes them."""
        ref = as_reference(ref)
        async with self._operation(ref.repository, keychain, operation_timeout, ref.name) as op:
            tags_of = _RepositoryTags(self, op, ref.repository)
            return await delete_image(tags_of, ref, tags, lookup_concurrency=self._tag_lookup_concurrency)

    async def push_blob(
        self,
        repository: Repository | Reference | str,
        data: bytes,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> str:
        """Upload a blob unless the repository has it already (monolithic: POST, then PUT with the
        digest); returns its digest."""
        repo = as_repository(repository)
        limit = self.transfer_timeout if operation_timeout is None else operation_timeout
        async with self._operation(repo, keychain, limit) as op:
            return await push.push_blob(self.transport, op, repo, data)

    async def push_manifest(
        self,
        ref: Reference | str,
        manifest: bytes | Mapping[str, Any],
        media_type: str,
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> str:
        """PUT a manifest (or index) under ``ref``'s tag or digest; returns its digest. The bytes are
        sent as given (a mapping is serialised once), because the digest is over these exact bytes."""
        ref = as_reference(ref)
        raw = manifest if isinstance(manifest, bytes) else orjson.dumps(manifest)
        async with self._operation(ref.repository, keychain, operation_timeout, ref.name) as op:
            return await push.push_manifest(self.transport, op, ref, raw, media_type)

    async def push_image(
        self,
        ref: Reference | str,
        config: Mapping[str, Any],
        layers: Sequence[bytes] = (),
        *,
        keychain: Keychain | None = None,
        operation_timeout: float | None = None,
    ) -> str:
        """Push a single-platform OCI image: the layers (uncompressed tar media type) and the config as
        blobs, then the manifest under ``ref``; returns the manifest digest. ``architecture``, ``os``
        and ``rootfs`` are filled in when ``config`` lacks them."""
        ref = as_reference(ref)
        config_raw = push.image_config_blob(config, layers)
        limit = self.transfer_timeout if operation_timeout is None else operation_timeout
        async with self._operation(ref.repository, keychain, limit, ref.name) as op:
            return await push.push_image(self.transport, op, ref, config_raw, layers)

    # -------------------------------------------------------------------------- implementations
    async def _get_manifest(self, op: Operation, ref: Reference) -> Manifest:
        repo = ref.repository
        identifier, index_digest = ref.identifier, None
        for _ in range(MAX_INDEX_DEPTH):
            reply = await self.transport.request(
                op,
                "GET",
                f"/v2/{repo.path}/manifests/{identifier}",
                scope=repo.scope("pull"),
                headers={"Accept": media.MANIFEST_ACCEPT},
                limit=MAX_MANIFEST,
            )
            if reply.status != 200:
                raise self.transport.failure(op, reply, f"image {_image_name(repo, identifier)}")
            digest, media_type, doc = self._check_manifest(op, ref, identifier, reply)
            if media_type not in media.INDEXES:
                return Manifest(ref, digest, media_type, doc, reply.body, index_digest)
            index_digest = index_digest or digest
            entries = doc.get("manifests")
            child = next(
                (
                    e
                    for e in (entries if isinstance(entries, list) else ())
                    if isinstance(e, dict) and media.platform_matches(e)
                ),
                None,
            )
            child_digest = child.get("digest") if child else None
            if child is None or not isinstance(child_digest, str) or not media.is_digest(child_digest):
                raise InvalidImage(
                    f"image {ref} is an index without a linux/amd64 image", registry=repo.registry.name
                )
            identifier = child_digest
        raise InvalidImage(f"image {ref} nests indexes too deeply", registry=repo.registry.name)

    def _check_manifest(
        self, op: Operation, ref: Reference, identifier: str, reply: Reply
    ) -> tuple[str, str, dict[str, Any]]:
        registry = op.registry.name
        digest = media.sha256_digest(reply.body)
        if media.is_digest(identifier) and digest != identifier:
            raise InvalidImage(
                f"image {ref}: manifest {identifier} has digest {digest} (corrupt registry content?)",
                registry=registry,
            )
        header = reply.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise InvalidImage(
                f"image {ref}: registry says the manifest digest is {header} but it is {digest}",
                registry=registry,
            )
        try:
            doc = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            raise InvalidImage(f"image {ref}: manifest is not JSON", registry=registry) from None
        if not isinstance(doc, dict):
            raise InvalidImage(f"image {ref}: manifest is not a JSON object", registry=registry)
        media_type = _media_type(reply.headers.get("Content-Type"))
        if media_type not in media.MANIFEST_TYPES:
            body_type = doc.get("mediaType")
            if isinstance(body_type, str) and body_type in media.MANIFEST_TYPES:
                media_type = body_type
            elif media_type in (media.DOCKER_SCHEMA1, media.DOCKER_SCHEMA1_SIGNED):
                raise InvalidImage(
                    f"image {ref}: Docker schema 1 manifests are not supported", registry=registry
                )
            else:
                media_type = media.OCI_INDEX if "manifests" in doc else media.OCI_MANIFEST
        return digest, media_type, doc

    async def _get_config(self, op: Operation, ref: Reference, digest: str) -> dict[str, Any]:
        repo = ref.repository
        key = (repo.registry.name, repo.path, digest)
        raw = self.cache.configs.get(key)
        if raw is None:
            reply = await self.transport.request(
                op, "GET", f"/v2/{repo.path}/blobs/{digest}", scope=repo.scope("pull"), limit=MAX_CONFIG
            )
            if reply.status != 200:
                raise self.transport.failure(op, reply, f"config blob {digest} of image {ref}")
            raw = reply.body
            if media.sha256_digest(raw) != digest:
                raise InvalidImage(
                    f"image {ref}: config blob {digest} does not match its digest", registry=op.registry.name
                )
            self.cache.configs.put(key, raw)
        try:
            config = orjson.loads(raw)
        except orjson.JSONDecodeError:
            config = None
        if not isinstance(config, dict):
            raise InvalidImage(f"image {ref}: config is not a JSON object", registry=op.registry.name)
        return config

    async def _head_manifest(self, op: Operation, repo: Repository, identifier: str) -> Descriptor:
        path = f"/v2/{repo.path}/manifests/{identifier}"
        reply = await self.transport.request(
            op, "HEAD", path, scope=repo.scope("pull"), headers={"Accept": media.MANIFEST_ACCEPT}
        )
        if reply.status != 200:
            raise self.transport.failure(op, reply, f"image {_image_name(repo, identifier)}")
        media_type = _media_type(reply.headers.get("Content-Type"))
        digest = reply.headers.get("Docker-Content-Digest", "")
        size = int(reply.headers.get("Content-Length") or 0)
        if not media.is_digest(digest):  # registries that omit the header on HEAD: ask for the body
            reply = await self.transport.request(
                op,
                "GET",
                path,
                scope=repo.scope("pull"),
                headers={"Accept": media.MANIFEST_ACCEPT},
                limit=MAX_MANIFEST,
            )
            if reply.status != 200:
                raise self.transport.failure(op, reply, f"image {_image_name(repo, identifier)}")
            digest, size = media.sha256_digest(reply.body), len(reply.body)
        return Descriptor(digest, media_type, size)

    async def _delete_manifest(self, op: Operation, repo: Repository, identifier: str) -> None:
        reply = await self.transport.request(
            op, "DELETE", f"/v2/{repo.path}/manifests/{identifier}", scope=repo.scope("delete")
        )
        if reply.status not in (200, 202, 204):
            raise self.transport.failure(op, reply, f"manifest {identifier} of {repo.name}")

    async def _list_tags(self, op: Operation, repo: Repository, page_size: int) -> list[str]:
        base = URL(await self.transport.base(op))
        url: URL | None = base.with_path(f"/v2/{repo.path}/tags/list").with_query({"n": str(page_size)})
        tags: list[str] = []
        seen: set[URL] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_TAG_PAGES:
                raise UnexpectedResponse(
                    f"registry {op.registry} paginates the tags of {repo.name} in a loop",
                    registry=op.registry.name,
                )
            seen.add(url)
            reply = await self.transport.request(op, "GET", url, scope=repo.scope("pull"), limit=MAX_CONFIG)
            if reply.status != 200:
                raise self.transport.failure(op, reply, f"repository {repo.name}")
            try:
                page = orjson.loads(reply.body)
                listed = page.get("tags") or []
            except (orjson.JSONDecodeError, AttributeError):
                listed = None
            if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
                raise UnexpectedResponse(
                    f"registry {op.registry} sent a malformed tag list for {repo.name}",
                    registry=op.registry.name,
                    status=reply.status,
                )
            tags.extend(listed)
            url = self._next_page(op, reply, base)
        return tags

    def _next_page(self, op: Operation, reply: Reply, base: URL) -> URL | None:
        """The ``Link: <url>; rel="next"`` target, resolved against the request and required to stay
        on the same registry (as go-containerregistry requires, against SSRF)."""
        link = reply.headers.get("Link", "")
        if not link:
            return None
        end = link.find(">")
        if not link.startswith("<") or end < 0:
            raise UnexpectedResponse(
                f"registry {op.registry} sent a malformed Link header: {one_line(link, 120)}",
                registry=op.registry.name,
            )
        target = link[1:end]
        if not target:
            return None
        url = reply.url.join(URL(target, encoded=True))
        if url.scheme != base.scheme or url.host != base.host or url.port != base.port:
            raise UnexpectedResponse(
                f"registry {op.registry} sent a next-page link to another host: {url.origin()}",
                registry=op.registry.name,
            )
        return url


@dataclass(slots=True)
class _RepositoryTags:
    """Korifi's delete algorithm's view of one repository, within one operation of ``client``."""

    client: RegistryClient
    op: Operation
    repo: Repository

    async def list_tags(self) -> list[str]:
        return await self.client._list_tags(self.op, self.repo, self.client.tag_page_size)

    async def digest_of(self, tag: str) -> str:
        return (await self.client._head_manifest(self.op, self.repo, tag)).digest

    async def delete_manifest(self, identifier: str) -> None:
        await self.client._delete_manifest(self.op, self.repo, identifier)


__all__ = [
    "ANONYMOUS",
    "Challenge",
    "DeleteResult",
    "Descriptor",
    "ImageConfig",
    "Manifest",
    "RegistryCache",
    "RegistryClient",
    "parse_challenge",
    "pick_challenge",
]
