"""Image references parsed exactly as go-containerregistry's ``name.ParseReference`` (default, weak
strictness) parses them, because Korifi's Go controller did and the same strings must mean the same
images here: which registry and repository, which tag or digest, and whether to talk plain HTTP.

Its rules, including the surprising ones, are kept on purpose:

* the first ``/``-separated part is the registry only if it is ``localhost`` or contains ``.`` or ``:``;
  otherwise the registry is ``index.docker.io`` (``docker.io`` is rewritten to it) and a one-component
  Docker Hub repository gets the ``library/`` prefix;
* a tag is whatever follows the last ``:`` if that part has no ``/`` (so ``host:5000/repo`` is untagged
  and gets ``latest``, while ``localhost:5000`` alone is Docker Hub's ``library/localhost`` at tag
  ``5000``); repository names may be any of ``a-z0-9_-./`` (even ``a//b``), tags any of
  ``A-Za-z0-9_-.`` up to 128 characters;
* ``repo:tag@sha256:…`` is a digest reference: the tag is validated, then dropped;
* plain HTTP (``Registry.scheme()``) only for ``localhost:<port>``, ``*.localhost[:port]``,
  ``127.0.0.1[:port]``, ``::1``/``[::1][:port]``, RFC 1918 IPv4 addresses and hosts configured insecure.
  Not for ``localhost`` without a port nor other 127.x addresses. go-containerregistry (and the client
  here) still tries HTTPS first for those and only falls back to HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from service.registry.errors import InvalidReference

DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_REGISTRY_ALIAS = "docker.io"
DEFAULT_TAG = "latest"
DEFAULT_NAMESPACE = "library"

REPOSITORY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-./"
TAG_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-.ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_REPOSITORY_SET = frozenset(REPOSITORY_CHARS)
_TAG_SET = frozenset(TAG_CHARS)
_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")

# Scheme heuristics, verbatim from go-containerregistry's pkg/name/registry.go.
_LOCAL = re.compile(r".*\.localhost(?::\d{1,5})?$")
_LOOPBACK = re.compile(r"^127\.0\.0\.1(?::\d{1,5})?$")
_IPV6_LOOPBACK = re.compile(r"^(::1|\[::1\](?::\d{1,5})?)$")
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

# Characters Go's net/url accepts unescaped in a host (shouldEscape(c, encodeHost) is false).
_HOST_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\""
)


def _valid_port_suffix(colon_port: str) -> bool:
    """Go's ``validOptionalPort``: empty, or ``:`` followed by digits only (``:`` alone is fine)."""
    return colon_port == "" or (colon_port[0] == ":" and all("0" <= c <= "9" for c in colon_port[1:]))


def valid_authority(name: str) -> bool:
    """Whether ``url.Parse("//" + name).Host == name`` in Go: a host[:port] with nothing else around it."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return False
    # '@' starts userinfo, '?' a query, '#' a fragment, '%' an escape: each makes Host differ from name.
    if any(c in name for c in "@?#%/"):
        return False
    if name.startswith("["):
        end = name.rfind("]")
        if end < 0 or not _valid_port_suffix(name[end + 1 :]):
            return False
    elif ":" in name and not _valid_port_suffix(name[name.rfind(":") :]):
        return False
    return all(c in _HOST_CHARS or ord(c) >= 0x80 for c in name)


def _check_element(kind: str, element: str, allowed: frozenset[str], shown: str, low: int, high: int) -> None:
    if not low <= len(element) <= high:
        raise InvalidReference(f"{kind} must be between {low} and {high} characters in length: {element}")
    if any(c not in allowed for c in element):
        raise InvalidReference(f"{kind} can only contain the characters `{shown}`: {element}")


@dataclass(frozen=True, slots=True)
class Registry:
    """A registry host, with its port if any (``index.docker.io``, ``127.0.0.1:5000``)."""

    name: str

    def is_rfc1918(self) -> bool:
        host = self.name.split(":")[0]
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return any(ip in net for net in _RFC1918)

    def scheme(self, insecure: Collection[str] = ()) -> str:
        """``http`` for hosts go-containerregistry treats as local (see the module docstring) or listed in
        ``insecure``; ``https`` otherwise."""
        name = self.name
        if (
            name in insecure
            or self.is_rfc1918()
            or name.startswith("localhost:")
            or _LOCAL.match(name)
            or _LOOPBACK.match(name)
            or _IPV6_LOOPBACK.match(name)
        ):
            return "http"
        return "https"

    def __str__(self) -> str:
        return self.name


def parse_registry(name: str, *, default: str = DEFAULT_REGISTRY) -> Registry:
    """go-containerregistry's ``NewRegistry`` (weak): empty means ``default``; ``docker.io`` is rewritten."""
    if not valid_authority(name):
        raise InvalidReference(f"registries must be valid RFC 3986 URI authorities: {name}")
    if name == "":
        name = default
    if name == DEFAULT_REGISTRY_ALIAS:
        name = DEFAULT_REGISTRY
    return Registry(name)


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository in a registry. ``path`` is the repository as the registry API sees it (with Docker
    Hub's implicit ``library/`` already added)."""

    registry: Registry
    path: str

    @property
    def name(self) -> str:
        """Fully qualified: ``index.docker.io/library/ubuntu``."""
        return f"{self.registry.name}/{self.path}"

    def scope(self, actions: str) -> str:
        """The token-auth scope for ``actions`` (``pull``, ``pull,push``...) on this repository."""
        return f"repository:{self.path}:{actions}"

    def tag(self, tag: str) -> Reference:
        return Reference(self, tag, None, f"{self.name}:{tag}")

    def digest(self, digest: str) -> Reference:
        return Reference(self, None, digest, f"{self.name}@{digest}", explicit_tag=False)

    def __str__(self) -> str:
        return self.name


def parse_repository(name: str, *, default_registry: str = DEFAULT_REGISTRY) -> Repository:
    """go-containerregistry's ``NewRepository`` (weak validation)."""
    if not name:
        raise InvalidReference("a repository name must be specified")
    registry, repo = "", name
    first, slash, rest = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first):
        registry, repo = first, rest
    _check_element("repository", repo, _REPOSITORY_SET, REPOSITORY_CHARS, 1, 255)
    reg = parse_registry(registry, default=default_registry)
    if "/" not in repo and reg.name == DEFAULT_REGISTRY:
        repo = f"{DEFAULT_NAMESPACE}/{repo}"
    return Repository(reg, repo)


@dataclass(frozen=True, slots=True)
class Reference:
    """A tag or digest reference. Exactly one of ``tag`` and ``digest`` is set; ``explicit_tag`` says
    whether the tag was written (``repo:v1``) or defaulted (``repo`` means ``repo:latest``)."""

    repository: Repository
    tag: str | None
    digest: str | None
    original: str
    explicit_tag: bool = True

    @property
    def registry(self) -> Registry:
        return self.repository.registry

    @property
    def identifier(self) -> str:
        """The tag or the digest: what goes after ``/manifests/`` in the registry API."""
        return self.digest if self.digest is not None else (self.tag or "")

    @property
    def name(self) -> str:
        """Fully qualified: ``index.docker.io/library/ubuntu:latest``, ``host:5000/app@sha256:…``."""
        if self.digest is not None:
            return f"{self.repository.name}@{self.digest}"
        return f"{self.repository.name}:{self.tag}"

    def __str__(self) -> str:
        return self.name


def _parse_tag(s: str, default_registry: str, default_tag: str) -> Reference:
    base, tag, explicit = s, "", False
    parts = s.split(":")
    # A last part with a '/' is a port followed by a path, not a tag.
    if len(parts) > 1 and "/" not in parts[-1]:
        base, tag = ":".join(parts[:-1]), parts[-1]
        if tag == "":
            raise InvalidReference(f"{s} must specify a tag name after the colon")
        explicit = True
    if tag:
        _check_element("tag", tag, _TAG_SET, TAG_CHARS, 1, 128)
    else:
        tag = default_tag
    return Reference(parse_repository(base, default_registry=default_registry), tag, None, s, explicit)


def _parse_digest(s: str, default_registry: str, default_tag: str) -> Reference:
    parts = s.split("@")
    if len(parts) != 2:
        raise InvalidReference(
            f"a digest must contain exactly one '@' separator (e.g. registry/repository@digest) saw: {s}"
        )
    base, digest = parts
    if not digest.startswith("sha256:"):
        raise InvalidReference(f"unsupported digest algorithm: {digest}")
    hex_part = digest[len("sha256:") :]
    if len(hex_part) != 64:
        raise InvalidReference("invalid checksum digest length")
    if not _SHA256_HEX.match(hex_part):
        raise InvalidReference("invalid checksum digest format")
    # As in Go: a base that is not a valid tag reference is parsed as a plain repository, which then
    # reports the problem.
    with contextlib.suppress(InvalidReference):
        base = _parse_tag(base, default_registry, default_tag).repository.name
    return Reference(parse_repository(base, default_registry=default_registry), None, digest, s, False)


# References are immutable values, and the reconcilers parse the same few (droplet images, registry
# prefixes) on every reconcile: a parse was 1.3 % of the service's CPU in a profile.
@functools.lru_cache(maxsize=4096)
def parse_reference(
    s: str, *, default_registry: str = DEFAULT_REGISTRY, default_tag: str = DEFAULT_TAG
) -> Reference:
    """``name.ParseReference``: a tag reference if ``s`` parses as one, else a digest reference.

    Raises ``InvalidReference`` whose message says why, taken from the digest parse when ``s`` contains
    an ``@`` and from the tag parse otherwise (Go only says "could not parse reference")."""
    try:
        return _parse_tag(s, default_registry, default_tag)
    except InvalidReference as tag_error:
        try:
            return _parse_digest(s, default_registry, default_tag)
        except InvalidReference as digest_error:
            why = digest_error if "@" in s else tag_error
            raise InvalidReference(f"could not parse reference {s!r}: {why}") from None


def try_parse_reference(value: str) -> Reference | None:
    """``parse_reference`` for a caller that only needs to know whether ``value`` is one."""
    try:
        return parse_reference(value)
    except InvalidReference:
        return None


def as_reference(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def as_repository(repo: Repository | Reference | str) -> Repository:
    if isinstance(repo, Repository):
        return repo
    if isinstance(repo, Reference):
        return repo.repository
    return parse_repository(repo)


def tag_of_build_tag(entry: str) -> str | None:
    """The tag written in one kpack ``Build.spec.tags`` entry, or None when it has none (or cannot be
    parsed, or is a digest reference).

    Korifi splits each entry on ``:`` and keeps two-part entries, which breaks when the registry host has
    a port: ``host:5000/repo:b1.2024…`` yields nothing and ``host:5000/repo`` yields ``5000/repo``. Parsing
    the entry as an image reference gets both right."""
    ref = try_parse_reference(entry)
    if ref is None:
        return None
    return ref.tag if ref.digest is None and ref.explicit_tag else None


def tags_of_build_tags(entries: Iterable[str]) -> list[str]:
    """The tags of ``Build.spec.tags``, in order, without duplicates; untagged entries give none."""
    out: list[str] = []
    for entry in entries:
        tag = tag_of_build_tag(entry)
        if tag is not None and tag not in out:
            out.append(tag)
    return out
