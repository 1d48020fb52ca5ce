"""Uploading images, which the controller itself never does: the kpack simulator pushes the droplets its
Builds "build", and the tests and the demo push the images they then read and delete.

It is kept apart from the read and delete operations the product depends on, so that those stay small and
nothing the product runs can write to a registry by accident; it shares their transport, so a push is
authenticated, probed, bounded and reported exactly as a read is (under ``RegistryClient``'s
``transfer_timeout`` rather than its metadata ``timeout``). Uploads are monolithic (POST, then one PUT
with the digest): test images are small, and chunked uploads would only add registry behaviours to cover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from yarl import URL

from service.registry import media
from service.registry.errors import InvalidImage, UnexpectedResponse
from service.registry.reference import Reference, Repository
from service.registry.transport import Operation, Reply, Transport


async def push_blob(transport: Transport, op: Operation, repo: Repository, data: bytes) -> str:
    """Upload a blob unless the repository has it already; returns its digest."""
    digest = media.sha256_digest(data)
    scope = repo.scope("pull,push")
    head = await transport.request(op, "HEAD", f"/v2/{repo.path}/blobs/{digest}", scope=scope)
    if head.status == 200:
        return digest
    if head.status != 404:
        raise transport.failure(op, head, f"blob {digest} of {repo.name}")
    start = await transport.request(op, "POST", f"/v2/{repo.path}/blobs/uploads/", scope=scope)
    if start.status != 202 or "Location" not in start.headers:
        raise transport.failure(op, start, f"blob upload to {repo.name}", expected="202 with a Location")
    location = start.url.join(URL(start.headers["Location"], encoded=True))
    done = await transport.request(
        op,
        "PUT",
        location.update_query({"digest": digest}),
        scope=scope,
        headers={"Content-Type": "application/octet-stream"},
        data=data,
    )
    if done.status != 201:
        raise transport.failure(op, done, f"blob upload to {repo.name}", expected="201")
    _check_stored(op, done, digest, f"blob {digest} of {repo.name}")
    return digest


async def push_manifest(
    transport: Transport, op: Operation, ref: Reference, raw: bytes, media_type: str
) -> str:
    """PUT these exact bytes (the digest is over them) under ``ref``'s tag or digest; returns the digest."""
    digest = media.sha256_digest(raw)
    if ref.digest is not None and ref.digest != digest:
        raise InvalidImage(f"manifest digest is {digest}, not {ref.digest}", registry=op.registry.name)
    repo = ref.repository
    reply = await transport.request(
        op,
        "PUT",
        f"/v2/{repo.path}/manifests/{ref.identifier}",
        scope=repo.scope("pull,push"),
        headers={"Content-Type": media_type},
        data=raw,
    )
    if reply.status not in (200, 201):
        raise transport.failure(op, reply, f"manifest {ref}", expected="201")
    _check_stored(op, reply, digest, f"manifest {ref}", f", not {digest}")
    return digest


def _check_stored(op: Operation, reply: Reply, digest: str, what: str, tail: str = "") -> None:
    """A registry that says it stored other content than we sent must not be believed."""
    answered = reply.headers.get("Docker-Content-Digest")
    if answered and answered != digest:
        raise UnexpectedResponse(
            f"registry {op.registry} stored {what} as {answered}{tail}", registry=op.registry.name
        )


def image_config_blob(config: Mapping[str, Any], layers: Sequence[bytes]) -> bytes:
    """``config`` with ``architecture``, ``os`` and ``rootfs`` filled in when it lacks them, serialised."""
    doc = dict(config)
    doc.setdefault("architecture", media.DEFAULT_ARCHITECTURE)
    doc.setdefault("os", media.DEFAULT_OS)
    doc.setdefault("rootfs", {"type": "layers", "diff_ids": [media.sha256_digest(b) for b in layers]})
    return orjson.dumps(doc)


async def push_image(
    transport: Transport, op: Operation, ref: Reference, config_raw: bytes, layers: Sequence[bytes]
) -> str:
    """The layers (uncompressed tar media type) and the config as blobs, then a single-platform OCI
    manifest under ``ref``; returns the manifest digest."""
    repo = ref.repository
    layer_descriptors = []
    for layer in layers:
        digest = await push_blob(transport, op, repo, layer)
        layer_descriptors.append({"mediaType": media.OCI_LAYER, "digest": digest, "size": len(layer)})
    config_digest = await push_blob(transport, op, repo, config_raw)
    manifest = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": {"mediaType": media.OCI_CONFIG, "digest": config_digest, "size": len(config_raw)},
        "layers": layer_descriptors,
    }
    return await push_manifest(transport, op, ref, orjson.dumps(manifest), media.OCI_MANIFEST)


__all__ = ["image_config_blob", "push_blob", "push_image", "push_manifest"]
