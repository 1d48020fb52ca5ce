"""Which buildpacks a workload may ask for, and where each comes from (kpack RFC 0009, kpack.md §6).

Korifi validates requested ids against the first buildpack of each group of the default ClusterBuilder's
resolved order (``status.order``), ids only, and names only the first unknown one. Here a request is an
id or ``id@version``, resolved as kpack's builder resolver does it over three sources, in kpack's order:
the namespace's ``Buildpack`` objects, the ``ClusterBuildpack`` objects, then the ClusterBuilder's order
(standing for its ClusterStore, which the custom Builder shares; the store itself is not read, so its
versions the ClusterBuilder did not pick are not seen). Only the objects' ``status.buildpacks`` count.

- ``id@version``: the first candidate whose version is that string (kpack compares strings: ``1.2`` is not
  ``1.2.0``), so the namespace's Buildpack wins.
- ``id``: the highest semver among all candidates, parsed as kpack's Masterminds semver does (leniently:
  ``v1`` and ``1.2`` are versions); equal versions go to the later source, as kpack's stable sort does. A
  Buildpack or ClusterBuildpack offering the id with a version that is not semver makes kpack refuse to
  choose, so that is reported too.

Every request that does not resolve is reported in one ``InvalidBuildpacks`` message (Korifi's text when
one id is unknown). The custom Builder's order names the resolved Buildpack or ClusterBuildpack with the
version found (``{kind, name, id, version}``), so kpack builds exactly what was validated, whichever other
objects carry the id; a buildpack the ClusterBuilder offers keeps Korifi's ``{id}`` (``{id, version}`` when
pinned), which kpack resolves against the same store.

Caches lag: a request that does not resolve from the informers' caches is resolved again from the API
before the workload is failed for good. While a Buildpack or ClusterBuildpack is still waiting for kpack
to read its image (no ``Ready`` yet, or a generation kpack has not observed), the workload waits
(``Unresolved``), since that object may offer the highest version or the one pinned: up to
``builderReadinessTimeout`` from the workload's creation, then it is resolved with what is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import semver

from service.kube.client import KubeClient
from service.kube.conditions import find
from service.kube.resources import BUILDPACK, CLUSTER_BUILDPACK
from service.kube.server_clock import server_now
from service.kube.timestamps import parse_rfc3339
from service.runtime import Lister, Obj
from service.runtime.store import NAMESPACE_INDEX

BUILDPACK_KIND = "Buildpack"
CLUSTER_BUILDPACK_KIND = "ClusterBuildpack"
CLUSTER_BUILDER_SOURCE = "ClusterBuilder"


def _cluster_builder_entries(cluster_builder: Obj) -> list[Obj]:
    """The first buildpack of each group of the ClusterBuilder's resolved order, as Korifi reads it."""
    return [
        entry["group"][0]
        for entry in (cluster_builder.get("status") or {}).get("order") or ()
        if entry.get("group") and entry["group"][0].get("id")
    ]


def parse_version(version: str) -> semver.Version | None:
    """A version as Masterminds semver (kpack's) reads it: an optional ``v``, minor and patch optional."""
    text = version.removeprefix("v")
    try:
        return semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None


def split_request(request: str) -> tuple[str, str]:
    """``id@version`` into its parts (buildpack ids have no ``@``); a bare id has the version ``""``."""
    bp_id, _, version = request.partition("@")
    return bp_id, version


@dataclass(frozen=True)
class Candidate:
    """One buildpack a source offers: ``kind`` is Buildpack, ClusterBuildpack or ClusterBuilder."""

    kind: str
    name: str
    id: str
    version: str

    def order_entry(self, pinned: bool) -> Obj:
        """The custom Builder's group entry for this choice (kpack.md §6.2)."""
        if self.kind == CLUSTER_BUILDER_SOURCE:
            return {"id": self.id, "version": self.version} if pinned else {"id": self.id}
        return {"kind": self.kind, "name": self.name, "id": self.id, "version": self.version}

    @property
    def where(self) -> str:
        return f'{self.kind} "{self.name}"'


@dataclass(frozen=True)
class Sources:
    """What a namespace's workloads can name: its Buildpacks, the ClusterBuildpacks, the ClusterBuilder."""

    buildpacks: Sequence[Obj]
    cluster_buildpacks: Sequence[Obj]
    cluster_builder: Obj

    def candidates(self, bp_id: str) -> list[Candidate]:
        """Every offer of ``bp_id``, in kpack's source order (within a kind by name, for a stable answer
        where kpack's lister order is arbitrary)."""
        out: list[Candidate] = []
        for kind, objs in (
            (BUILDPACK_KIND, self.buildpacks),
            (CLUSTER_BUILDPACK_KIND, self.cluster_buildpacks),
        ):
            for obj in sorted(objs, key=lambda o: str(o["metadata"]["name"])):
                for entry in (obj.get("status") or {}).get("buildpacks") or ():
                    if isinstance(entry, dict) and entry.get("id") == bp_id:
                        out.append(
                            Candidate(kind, obj["metadata"]["name"], bp_id, str(entry.get("version", "")))
                        )
        name = self.cluster_builder["metadata"]["name"]
        for entry in _cluster_builder_entries(self.cluster_builder):
            if entry["id"] == bp_id:
                out.append(Candidate(CLUSTER_BUILDER_SOURCE, name, bp_id, str(entry.get("version") or "")))
        return out

    def unresolved(self) -> list[str]:
        """The Buildpacks and ClusterBuildpacks kpack has not read since they last changed."""
        out = []
        for kind, objs in (
            (BUILDPACK_KIND, self.buildpacks),
            (CLUSTER_BUILDPACK_KIND, self.cluster_buildpacks),
        ):
            for obj in objs:
                status = obj.get("status") or {}
                ready = find(status.get("conditions") or [], "Ready")
                current = status.get("observedGeneration") == obj["metadata"].get("generation")
                if ready is None or ready.get("status") == "Unknown" or not current:
                    out.append(f'{kind} "{obj["metadata"]["name"]}"')
        return sorted(out)


@dataclass(frozen=True)
class Problem:
    request: str
    detail: str = ""  # empty: the id is offered nowhere


@dataclass
class Resolution:
    """Each request's choice (the custom Builder's order), or what is wrong with the requests."""

    order: list[Obj] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def message(self) -> str:
        """Korifi's text, naming every request that does not resolve (and why, where an id is known)."""
        names = ", ".join(f'"{p.request}"' for p in self.problems)
        plural = "s" if len(self.problems) > 1 else ""
        details = "; ".join(p.detail for p in self.problems if p.detail)
        why = f" ({details})" if details else ""
        return f"buildpack{plural} {names} not present in default ClusterStore{why}. See `cf buildpacks`"


def resolve(requests: Iterable[str], sources: Sources) -> Resolution:
    result = Resolution()
    for request in requests:
        if any(p.request == request for p in result.problems):
            continue  # named once
        bp_id, version = split_request(request)
        candidates = sources.candidates(bp_id)
        if not candidates:
            result.problems.append(Problem(request))
            continue
        if version:
            chosen = next((c for c in candidates if c.version == version), None)
            if chosen is None:
                found = ", ".join(sorted({c.version for c in candidates if c.version}))
                only = f", only {found}" if found else ""
                result.problems.append(Problem(request, f'"{bp_id}" has no version {version}{only}'))
                continue
        else:
            invalid = next(
                (
                    c
                    for c in candidates
                    if c.kind != CLUSTER_BUILDER_SOURCE and parse_version(c.version) is None
                ),
                None,
            )
            if invalid is not None:
                result.problems.append(
                    Problem(
                        request,
                        f'{invalid.where} offers "{bp_id}" with version "{invalid.version}", not semver',
                    )
                )
                continue
            # The ClusterBuilder's own entries were resolved by kpack, so a version it wrote always parses;
            # one that does not (none at all) ranks lowest rather than hiding the id.
            lowest = semver.Version(0)
            ranked = sorted(candidates, key=lambda c: parse_version(c.version) or lowest)  # stable
            chosen = ranked[-1]
        result.order.append({"group": [chosen.order_entry(pinned=bool(version))]})
    return result


class Unresolved(Exception):
    """Requests do not resolve while kpack has yet to read some Buildpack or ClusterBuildpack."""


async def resolve_confirmed(
    requests: Sequence[str],
    cluster_builder: Obj,
    work: Obj,
    buildpacks: Lister,
    cluster_buildpacks: Lister,
    client: KubeClient,
    patience: float,
) -> Resolution:
    """``resolve`` from the caches; where something does not resolve, again from the API, since a
    Buildpack made a moment ago may not be cached yet. Raises ``Unresolved`` while kpack has yet to read a
    Buildpack or ClusterBuildpack (it may offer a higher version, or the one asked for), for at most
    ``patience`` seconds from the workload's creation: a kpack that never reads one must not hold every
    workload that names buildpacks."""
    namespace = work["metadata"]["namespace"]
    created = parse_rfc3339(work["metadata"].get("creationTimestamp"))
    young = created is not None and (server_now() - created).total_seconds() < patience
    cached = Sources(
        buildpacks.by_index(NAMESPACE_INDEX, namespace), cluster_buildpacks.list(), cluster_builder
    )
    pending = cached.unresolved()
    if pending and young:
        raise Unresolved(f"waiting for kpack to resolve {', '.join(pending)}")
    resolution = resolve(requests, cached)
    if not resolution.problems:
        return resolution
    listed, _ = await client.list_all(BUILDPACK, namespace=namespace)
    cluster_listed, _ = await client.list_all(CLUSTER_BUILDPACK)
    fresh = Sources(listed, cluster_listed, cluster_builder)
    resolution = resolve(requests, fresh)
    pending = fresh.unresolved()
    if resolution.problems and pending and young:
        raise Unresolved(f"waiting for kpack to resolve {', '.join(pending)}")
    return resolution
