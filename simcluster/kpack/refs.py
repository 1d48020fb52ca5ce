"""Names and image references as kpack computes them: knative's ``ChildName``, go-containerregistry's tag
and reference checks, digests, and the tags a build pushes.

The Image reconciler's child names (``<image>-build-<N>``, ``<image>-source``, ``<image>-cache``) and the
build-number tag are what clients key on, so they are reproduced exactly, including the md5-shortened form
for long names.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from service.registry.errors import InvalidReference
from service.registry.reference import Reference, parse_reference, try_parse_reference

_LONGEST = 63
_MD5_LEN = 32
_HEAD = _LONGEST - _MD5_LEN
_ALNUM = re.compile(r"^[a-zA-Z0-9]*$")


def child_name(parent: str, suffix: str) -> str:
    """knative ``kmeta.ChildName``."""
    if len(parent) <= _LONGEST - len(suffix):
        return parent + suffix
    if _HEAD - len(suffix) <= 0:
        digest = hashlib.md5((parent + suffix).encode(), usedforsecurity=False).hexdigest()
        ret = parent[:_HEAD] + digest
        if (d := _LONGEST - len(ret)) > 0:
            ret += suffix[:d]
        while ret and not _ALNUM.match(ret[-1]):
            ret = ret[:-1]
        return ret
    digest = hashlib.md5(parent.encode(), usedforsecurity=False).hexdigest()
    return parent[: _HEAD - len(suffix)] + digest + suffix


def parse_tag(value: str) -> Reference | None:
    """``name.NewTag(value, name.WeakValidation)``: a tag reference (a missing tag is ``latest``), or None
    when ``value`` is not one (a digest reference is not a tag)."""
    ref = try_parse_reference(value)
    return ref if ref is not None and ref.digest is None else None


def is_reference(value: str) -> bool:
    """``name.ParseReference(value, name.WeakValidation)`` succeeds."""
    return try_parse_reference(value) is not None


def repository_of(value: str) -> str:
    """``ref.Context().Name()``: the fully qualified repository (``index.docker.io/library/app``)."""
    return parse_reference(value).repository.name


def fake_digest(*parts: str) -> str:
    """A stable sha256 digest standing in for an image the simulator does not really have."""
    return "sha256:" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def digest_of(reference: str) -> str:
    """The digest an image reference resolves to in the simulated registry: the digest it names, or one
    derived from the reference (so the same tag always resolves the same, and another tag differently)."""
    try:
        ref = parse_reference(reference)
    except InvalidReference:
        return fake_digest(reference)
    return ref.digest or fake_digest(ref.name)


def resolved(reference: str) -> str:
    """``<repository>@<digest>`` of an image reference, as kpack writes ``latestImage`` fields."""
    return f"{repository_of(reference)}@{digest_of(reference)}"


def build_tags(tag: str, additional: list[str], build_number: int, strategy: str, now: datetime) -> list[str]:
    """``Image.generateTags``: the tag, the build-number tag (unless the strategy is ``None``), then the
    additional tags. An unparsable tag yields no tags at all, as in kpack."""
    if strategy == "None":
        return [tag, *additional]
    ref = parse_tag(tag)
    if ref is None:
        return []
    prefix = "" if ref.tag == "latest" else f"{ref.tag}-"
    stamp = now.strftime("%Y%m%d.%H%M%S")
    return [tag, f"{ref.repository.name}:{prefix}b{build_number}.{stamp}", *additional]
