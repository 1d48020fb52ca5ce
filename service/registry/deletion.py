"""Korifi's ``Client.Delete`` (korifi.md 4.1.7): how a droplet image leaves the registry when its kpack
Build goes.

The algorithm is Korifi's and not the registry's: which tags to try, when ``latest`` goes too, when the
manifest may go, and which failures are tolerated are choices Korifi made, and the product must keep
them to behave as Korifi does, including on registries (distribution 2.8) where half of it cannot work.
It is written here against a three-call interface (``RepositoryTags``) rather than HTTP, so the choices
read as one function and can be checked without a registry; ``RegistryClient.delete_image`` runs it
inside one operation (one deadline, one set of credentials) over the client's transport.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from service.registry.errors import NotFound, RegistryError
from service.registry.reference import Reference

log = logging.getLogger("service.registry")


@dataclass(slots=True)
class DeleteResult:
    """What ``delete_image`` did. ``pointing`` lists the tags that pointed at the image when it started;
    ``remaining`` those that still point at it and kept the manifest (empty if the manifest went)."""

    reference: str
    pointing: list[str] = field(default_factory=list)
    deleted_tags: list[str] = field(default_factory=list)
    failed_tags: dict[str, str] = field(default_factory=dict)
    manifest_deleted: bool = False
    manifest_missing: bool = False
    remaining: list[str] = field(default_factory=list)


class RepositoryTags(Protocol):
    """What Korifi's ``Delete`` asks of the image's repository. Each call raises the errors of
    ``service.registry.errors``; ``NotFound`` when the tag or manifest is not there."""

    async def list_tags(self) -> list[str]:
        """All tags of the repository."""
        ...

    async def digest_of(self, tag: str) -> str:
        """The digest of the manifest ``tag`` points at now."""
        ...

    async def delete_manifest(self, identifier: str) -> None:
        """``DELETE`` the manifest by tag or digest."""
        ...


async def delete_image(
    repo: RepositoryTags, ref: Reference, tags: Iterable[str] = (), *, lookup_concurrency: int = 4
) -> DeleteResult:
    """Korifi's ``Client.Delete(ref, tags…)``, step by step:

    1. list the repository's tags and keep those whose manifest digest equals ``ref``'s identifier
       (a failing listing or lookup is an error; a tag that vanished meanwhile is skipped);
    2. for each requested tag among them: check it still points at the digest and ``DELETE`` it by
       tag; a failure is only recorded in ``failed_tags``, and the tag counts as handled either way;
    3. if the only tag left pointing at the digest is ``latest``, do the same for it;
    4. if no tag is left, delete the manifest by ``ref``'s identifier (``NotFound`` tolerated and
       reported as ``manifest_missing``); otherwise keep it and report the tags in ``remaining``.

    On distribution 2.8 a tag cannot be deleted on its own (``DELETE`` by tag answers 400
    ``DIGEST_INVALID``), so step 2 always fails there, and it is step 4 that removes the tags:
    deleting a manifest by digest also removes every tag pointing at it. A requested tag therefore
    survives only when another, unrequested tag keeps the manifest. Registries that implement tag
    deletion (OCI distribution spec 1.1: Harbor, zot, distribution 3) behave exactly as Korifi
    intended.

    ``ref`` is meant to be a digest reference (a Build's ``status.latestImage``). With a tag reference,
    as in Korifi, no tag matches and the final delete goes by tag, which distribution 2.8 refuses
    (``UnexpectedResponse``)."""
    result = DeleteResult(ref.name)
    all_tags = await repo.list_tags()
    digests = await _digests_of(repo, ref, all_tags, lookup_concurrency)
    result.pointing = [t for t in all_tags if digests.get(t) == ref.identifier]
    remaining = dict.fromkeys(result.pointing)
    for tag in tags:
        if tag not in remaining:
            log.info("tag %s does not point at %s: not deleted", tag, ref.name)
            continue
        await _delete_tag(repo, ref, tag, result)
        del remaining[tag]
    if list(remaining) == ["latest"]:
        await _delete_tag(repo, ref, "latest", result)
        del remaining["latest"]
    if remaining:
        result.remaining = list(remaining)
        return result
    try:
        await repo.delete_manifest(ref.identifier)
        result.manifest_deleted = True
    except NotFound:
        log.info("manifest %s disappeared before its deletion", ref.name)
        result.manifest_missing = True
    return result


async def _digests_of(
    repo: RepositoryTags, ref: Reference, tags: Sequence[str], concurrency: int
) -> dict[str, str]:
    """The manifest digest of each tag, a few lookups at a time. A tag deleted since the listing is
    left out; any other failure fails the whole lookup (as Korifi's ``getTagSet``)."""
    found: dict[str, str] = {}
    failures: list[RegistryError] = []
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def lookup(tag: str) -> None:
        async with limiter:
            if failures:
                return
            try:
                found[tag] = await repo.digest_of(tag)
            except NotFound:
                log.info("tag %s of %s vanished while listing tags", tag, ref.repository.name)
            except RegistryError as exc:
                failures.append(exc)

    async with anyio.create_task_group() as tg:
        for tag in tags:
            tg.start_soon(lookup, tag)
    if failures:
        raise failures[0]
    return found


async def _delete_tag(repo: RepositoryTags, ref: Reference, tag: str, result: DeleteResult) -> None:
    """Korifi's ``deleteTag``: re-resolve the tag and delete it by tag if it still points at ``ref``'s
    digest. Failures are recorded, never raised."""
    name = ref.repository.name
    try:
        current = await repo.digest_of(tag)
    except RegistryError as exc:
        log.info("could not resolve tag %s of %s: %s", tag, name, exc)
        result.failed_tags[tag] = str(exc)
        return
    if current != ref.identifier:
        return
    try:
        await repo.delete_manifest(tag)
    except RegistryError as exc:
        log.info("could not delete tag %s of %s: %s", tag, name, exc)
        result.failed_tags[tag] = str(exc)
        return
    result.deleted_tags.append(tag)


__all__ = ["DeleteResult", "RepositoryTags", "delete_image"]
