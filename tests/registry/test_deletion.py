"""Korifi's delete algorithm on its own, over an in-memory repository: the choices the registry tests cannot
easily provoke (a tag that moves or vanishes mid-delete, a failing lookup, the lookup concurrency)."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from service.registry import NotFound, RegistryError, UnexpectedResponse, media, parse_reference
from service.registry.deletion import delete_image

pytestmark = pytest.mark.anyio

MINE, OTHER = media.sha256_digest(b"mine"), media.sha256_digest(b"other")
REF = parse_reference(f"registry.example.com/app@{MINE}")


@dataclass
class FakeRepository:
    """Tags and manifests in memory. Deleting a manifest by digest drops its tags (as distribution does);
    deleting by tag works only with ``tag_deletion`` (distribution 2.8 answers 400 DIGEST_INVALID)."""

    tags: dict[str, str]
    manifests: set[str] = field(default_factory=lambda: {MINE, OTHER})
    tag_deletion: bool = True
    lookup_errors: dict[str, RegistryError] = field(default_factory=dict)
    moves: dict[str, str] = field(default_factory=dict)  # tag -> digest it points at from its 2nd lookup
    vanished: set[str] = field(default_factory=set)  # tags gone after the listing
    deleted: list[str] = field(default_factory=list)
    looked_up: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def list_tags(self) -> list[str]:
        listed = list(self.tags)
        for tag in self.vanished:
            del self.tags[tag]
        return listed

    async def digest_of(self, tag: str) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.01)
        finally:
            self.in_flight -= 1
        self.looked_up.append(tag)
        if tag in self.moves and self.looked_up.count(tag) > 1:
            self.tags[tag] = self.moves[tag]
        if tag in self.lookup_errors:
            raise self.lookup_errors[tag]
        if tag not in self.tags:
            raise NotFound(f"image app:{tag} not found")
        return self.tags[tag]

    async def delete_manifest(self, identifier: str) -> None:
        if media.is_digest(identifier):
            if identifier not in self.manifests:
                raise NotFound(f"manifest {identifier} not found")
            self.manifests.discard(identifier)
            self.tags = {t: d for t, d in self.tags.items() if d != identifier}
        elif not self.tag_deletion:
            raise UnexpectedResponse("400 Bad Request: DIGEST_INVALID", status=400, code="DIGEST_INVALID")
        elif identifier not in self.tags:
            raise NotFound(f"image app:{identifier} not found")
        else:
            del self.tags[identifier]
        self.deleted.append(identifier)


async def test_requested_tag_then_latest_then_manifest() -> None:
    repo = FakeRepository({"b1": MINE, "latest": MINE, "b0": OTHER})
    result = await delete_image(repo, REF, ["b1"])
    assert sorted(result.pointing) == ["b1", "latest"]
    assert result.deleted_tags == ["b1", "latest"]
    assert result.manifest_deleted and not result.remaining and not result.failed_tags
    assert repo.deleted == ["b1", "latest", MINE]
    assert repo.tags == {"b0": OTHER}


async def test_without_tag_deletion_the_manifest_takes_the_tags() -> None:
    repo = FakeRepository({"b1": MINE, "latest": MINE}, tag_deletion=False)
    result = await delete_image(repo, REF, ["b1"])
    assert set(result.failed_tags) == {"b1", "latest"}
    assert all("DIGEST_INVALID" in why for why in result.failed_tags.values())
    assert result.deleted_tags == [] and result.manifest_deleted
    assert repo.tags == {}


async def test_an_unrequested_tag_keeps_the_manifest() -> None:
    repo = FakeRepository({"b1": MINE, "keep": MINE, "latest": MINE})
    result = await delete_image(repo, REF, ["b1", "not-mine"])
    assert result.deleted_tags == ["b1"]
    assert sorted(result.remaining) == ["keep", "latest"]
    assert not result.manifest_deleted and MINE in repo.manifests


async def test_a_tag_moved_since_the_listing_is_left_but_counts_as_handled() -> None:
    """Korifi's ``deleteTag`` re-resolves the tag and leaves it when it no longer points at the image; the
    tag is not failed, and since no tag is left the manifest goes."""
    repo = FakeRepository({"b1": MINE}, moves={"b1": OTHER})
    result = await delete_image(repo, REF, ["b1"])
    assert result.pointing == ["b1"]
    assert result.deleted_tags == [] and result.failed_tags == {}
    assert result.manifest_deleted and repo.deleted == [MINE]
    assert repo.tags == {"b1": OTHER}


async def test_a_vanished_tag_is_skipped_and_a_missing_manifest_tolerated() -> None:
    repo = FakeRepository({"b1": MINE, "gone": MINE}, manifests={OTHER}, vanished={"gone"})
    result = await delete_image(repo, REF, ["b1", "gone"])
    assert result.pointing == ["b1"]
    assert result.manifest_missing and not result.manifest_deleted


async def test_a_failing_lookup_fails_the_delete_before_anything_is_deleted() -> None:
    failure = UnexpectedResponse("registry answered 500", status=500)
    repo = FakeRepository({"b1": MINE, "b2": MINE}, lookup_errors={"b2": failure})
    with pytest.raises(UnexpectedResponse) as info:
        await delete_image(repo, REF, ["b1"])
    assert info.value is failure
    assert repo.deleted == []


async def test_lookups_run_a_few_at_a_time() -> None:
    repo = FakeRepository({f"t{i}": OTHER for i in range(12)})
    result = await delete_image(repo, REF, lookup_concurrency=3)
    assert repo.most_in_flight == 3
    assert result.pointing == [] and result.manifest_deleted
