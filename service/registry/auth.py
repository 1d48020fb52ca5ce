"""Registry credentials from Kubernetes pull secrets, matched to images the way Korifi's keychain does.

Korifi resolves credentials with go-containerregistry's ``k8schain`` (package ``authn/kubernetes``), a
port of kubelet's ``credentialprovider`` keyring. Which secret entry applies to which image decides
whether a push or pull works, so the rules are reproduced exactly rather than approximated:

* only ``kubernetes.io/dockerconfigjson`` (key ``.dockerconfigjson``, its ``auths`` object) and
  ``kubernetes.io/dockercfg`` (key ``.dockercfg``, the auths object itself) secrets count; others, and
  empty values, are skipped. A secret that cannot be decoded fails the whole keychain, as in Go;
* each entry key gets ``https://`` unless it has a scheme, is parsed as a URL, and becomes host plus path
  with a leading ``/v1/`` or ``/v2/`` cut to ``/`` (so ``https://index.docker.io/v1/`` is the host
  ``index.docker.io``); a path of ``/`` is dropped;
* keys are tried in *reverse lexicographic* order (the Go code sorts descending, which puts
  ``host/a/b`` before ``host/a`` before ``host``; this is what korifi.md calls "longest first"). For equal
  keys the first secret wins;
* a key matches the repository ``registry/path`` when the hosts have as many dot-separated labels and
  each label matches as a Go ``filepath.Match`` glob (``*.example.com``), the ports are equal (no port
  only matches no port) and the key's path is a plain string prefix of the repository path
  (``host/par`` matches ``host/partial``);
* an entry's base64 ``auth`` (``user:password``) overrides ``username``/``password``; ``registrytoken``
  is sent as a bearer token as is.

Only this first link of k8schain's chain is implemented: the process's own docker config and the cloud
credential helpers (GCR, ECR, ACR) are not consulted, and ``identitytoken`` (OAuth2 refresh tokens) is
parsed but not used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.registry.errors import KeychainError
from service.registry.reference import Reference, Registry, Repository, as_repository, valid_authority

DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"
DOCKERCFG_KEY = ".dockercfg"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to authenticate with. Anonymous unless it has a username *and* password, or a registry token
    (go-containerregistry sends Basic only when both are non-empty)."""

    username: str = ""
    password: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = field(default="", compare=False)  # where it came from, for messages: "secret ns/name"

    @property
    def anonymous(self) -> bool:
        return not self.registry_token and not (self.username and self.password)

    def basic_authorization(self) -> str | None:
        """The ``Authorization`` header value for Basic auth, or None without a username and password."""
        if not (self.username and self.password):
            return None
        raw = f"{self.username}:{self.password}".encode("utf-8", "surrogateescape")
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def fingerprint(self) -> str:
        """A short digest identifying these credentials in cache keys (never the secret itself)."""
        material = "\0".join((self.username, self.password, self.registry_token, self.identity_token))
        return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    def describe(self) -> str:
        """For messages: who we tried to be, never the password."""
        if self.registry_token and not self.username:
            who = "a registry token"
        else:
            who = f"user {self.username!r}" if self.username else "no username"
        return f"{who} (from {self.source})" if self.source else who


ANONYMOUS = Credentials()


# --- Go's path/filepath.Match, for one host label ------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """The regex equivalent of a Go ``filepath.Match`` pattern, or None if Go would report
    ``ErrBadPattern`` (a malformed pattern never matches)."""
    out: list[str] = []
    i, n = 0, len(pattern)

    def esc(j: int) -> tuple[str, int] | None:
        # Go's getEsc: a class character, possibly backslash-escaped; '-' and ']' must be escaped.
        if j >= n or pattern[j] in "-]":
            return None
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                return None
        if j + 1 >= n:  # the class must go on (at least its closing bracket)
            return None
        return pattern[j], j + 1

    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                return None
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            count = 0
            while True:
                if i < n and pattern[i] == "]" and count:
                    i += 1
                    break
                got = esc(i)
                if got is None:
                    return None
                lo, i = got
                hi = lo
                if pattern[i] == "-":
                    got = esc(i + 1)
                    if got is None:
                        return None
                    hi, i = got
                count += 1
                if lo <= hi:  # Go accepts a reversed range, which matches nothing
                    ranges.append(f"{re.escape(lo)}-{re.escape(hi)}" if hi != lo else re.escape(lo))
            if ranges:
                out.append(("[^" if negate else "[") + "".join(ranges) + "]")
            else:
                out.append("." if negate else "(?!)")
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match(pattern, name)``, a malformed pattern counting as no match."""
    rx = _glob_regex(pattern)
    return rx is not None and rx.fullmatch(name) is not None


_NEVER = re.compile("(?!)")  # a malformed glob: matches nothing


# --- Go's net/url, as far as the keyring needs it ------------------------------------------------------


def _go_parse_url(raw: str) -> tuple[str, str] | None:
    """(host, path) of ``raw`` as Go's ``url.Parse`` gives ``URL.Host`` and ``URL.Path``; None where Go
    returns an error. ``raw`` has a scheme (``https://…``)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        return None
    raw = raw.split("#", 1)[0]
    scheme, sep, rest = raw.partition("://")
    if not sep or not scheme:
        return None
    rest = rest.split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    path = slash + path
    host = authority.rpartition("@")[2]
    if not valid_authority(host):  # the same host rules as for a reference's registry
        return None
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        return None
    return host, urllib.parse.unquote(path, errors="surrogateescape")


def _split_host_port(host: str) -> tuple[list[str], str]:
    """Go's ``splitURL``: the host's dot-separated labels and its port ("" when ``net.SplitHostPort``
    fails, which it does for a host without a port)."""
    name, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end > 0 and host[end + 1 : end + 2] == ":" and host.count("]") == 1:
            name, port = host[1:end], host[end + 2 :]
    elif host.count(":") == 1:
        name, port = host.split(":")
    return name.split("."), port


@dataclass(frozen=True, slots=True)
class _Split:
    """An image or a keyring key as Go's ``URLsMatch`` compares them: host labels, port and path."""

    labels: tuple[str, ...]
    port: str
    path: str

    @classmethod
    def of(cls, value: str) -> _Split | None:
        """``value`` (no scheme) parsed as ``https://value``; None where Go's ``url.Parse`` fails."""
        parsed = _go_parse_url("https://" + value)
        if parsed is None:
            return None
        host, path = parsed
        labels, port = _split_host_port(host)
        return cls(tuple(labels), port, path)


@dataclass(frozen=True, slots=True)
class _KeyPattern:
    """A keyring key, parsed once and its host labels compiled as globs."""

    key: str
    split: _Split | None
    globs: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, key: str) -> _KeyPattern:
        split = _Split.of(key)
        globs = () if split is None else tuple(_glob_regex(label) or _NEVER for label in split.labels)
        return cls(key, split, globs)

    def matches(self, target: _Split) -> bool:
        g = self.split
        if g is None or g.port != target.port or len(g.labels) != len(target.labels):
            return False
        if not target.path.startswith(g.path):
            return False
        return all(
            rx.fullmatch(label) is not None for rx, label in zip(self.globs, target.labels, strict=True)
        )


# --- secrets -------------------------------------------------------------------------------------------


def docker_config_secret(
    name: str, namespace: str, registry: str, username: str, password: str
) -> dict[str, Any]:
    """A ``kubernetes.io/dockerconfigjson`` Secret holding one registry's credentials, as ``kubectl create
    secret docker-registry`` writes it (the keychain above reads it back)."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = {"auths": {registry: {"username": username, "password": password, "auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": DOCKER_CONFIG_JSON,
        "metadata": {"name": name, "namespace": namespace},
        "data": {DOCKER_CONFIG_JSON_KEY: base64.b64encode(orjson.dumps(config)).decode()},
    }


def _b64decode_go(field: str) -> bytes:
    """Go's ``decodeDockerConfigFieldAuth`` choice: padded standard base64 if the (trimmed) value ends
    with ``=``, unpadded otherwise. Go's decoder skips CR and LF."""
    value = field.replace("\r", "").replace("\n", "")
    if field.strip().endswith("="):
        return base64.b64decode(value, validate=True)
    if "=" in value or len(value) % 4 == 1:
        raise binascii.Error("illegal base64 data")
    return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)


def _get_ci(obj: Mapping[str, Any], key: str) -> Any:
    """Go's encoding/json field lookup: an exact key, else a case-insensitive one (the last one wins)."""
    if key in obj:
        return obj[key]
    found = None
    for k, v in obj.items():
        if k.lower() == key:
            found = v
    return found


def _credentials(entry: Any, source: str, where: str) -> Credentials:
    if entry is None:
        return Credentials(source=source)
    if not isinstance(entry, Mapping):
        raise KeychainError(f"{where}: an auths entry must be an object")
    values: dict[str, str] = {}
    for key in ("username", "password", "auth", "identitytoken", "registrytoken"):
        value = _get_ci(entry, key)
        if value is not None and not isinstance(value, str):
            raise KeychainError(f"{where}: field {key!r} must be a string")
        values[key] = value or ""
    username, password = values["username"], values["password"]
    if values["auth"]:
        try:
            decoded = _b64decode_go(values["auth"]).decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError):
            raise KeychainError(f"{where}: unable to decode auth field: illegal base64 data") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise KeychainError(
                f"{where}: unable to decode auth field: must be formatted as base64(username:password)"
            )
    return Credentials(
        username=username,
        password=password,
        registry_token=values["registrytoken"],
        identity_token=values["identitytoken"],
        source=source,
    )


def _key_of(registry: str, where: str) -> str:
    """The keyring key of an auths entry: host plus path, ``/v1/`` and ``/v2/`` prefixes cut."""
    value = registry if registry.startswith(("https://", "http://")) else "https://" + registry
    parsed = _go_parse_url(value)
    if parsed is None:
        raise KeychainError(f"{where}: entry {value!r} in dockercfg invalid")
    host, path = parsed
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return host + path if path and path != "/" else host


def _versions(secrets: list[Mapping[str, Any]]) -> tuple[tuple[str, str], ...] | None:
    """The Secrets' identities as the API gives them (uid, resourceVersion); None if one lacks either."""
    key = []
    for secret in secrets:
        meta = secret.get("metadata") or {}
        uid, version = meta.get("uid"), meta.get("resourceVersion")
        if not (isinstance(uid, str) and uid and isinstance(version, str) and version):
            return None
        key.append((uid, version))
    return tuple(key)


class Keychain:
    """Credentials for images, resolved kubelet-style from docker config entries (see the module
    docstring). An empty keychain resolves everything to anonymous."""

    def __init__(self, entries: Iterable[tuple[str, Credentials]] = ()) -> None:
        self._creds: dict[str, Credentials] = {}
        for key, creds in entries:
            self._creds.setdefault(key, creds)  # for equal keys the first one wins
        self._index = sorted(self._creds, reverse=True)
        # each key parsed and its globs compiled once, in the order they are tried
        self._patterns = [_KeyPattern.of(key) for key in self._index]

    @classmethod
    def from_secrets(cls, secrets: Iterable[Mapping[str, Any]]) -> Keychain:
        """A keychain from Kubernetes ``Secret`` objects as plain dicts (``type`` and base64 ``data``),
        in the order given (the ServiceAccount's ``imagePullSecrets`` order). Raises ``KeychainError``
        for a docker secret whose content cannot be decoded.

        Secrets read from the API (with a uid and a resourceVersion) give the keychain made from the same
        versions before, if it is still kept: a droplet's image read makes one from the same few Secrets
        for every workload of a space (1.4 % of the service's CPU in a profile), and a keychain never
        changes once made. Any write to a Secret gives it a new resourceVersion, hence a new keychain."""
        secrets = list(secrets)
        key = _versions(secrets)
        if key is not None and (kept := _KEYCHAINS.get(key)) is not None:
            return kept
        keychain = cls._decode_secrets(secrets)
        if key is not None:
            if len(_KEYCHAINS) >= _KEYCHAINS_KEPT:
                del _KEYCHAINS[next(iter(_KEYCHAINS))]  # the oldest
            _KEYCHAINS[key] = keychain
        return keychain

    @classmethod
    def _decode_secrets(cls, secrets: Iterable[Mapping[str, Any]]) -> Keychain:
        entries: list[tuple[str, Credentials]] = []
        for secret in secrets:
            meta = secret.get("metadata") or {}
            name = f"{meta.get('namespace', '')}/{meta.get('name', '')}".strip("/") or "<unnamed>"
            kind = secret.get("type")
            if kind == DOCKER_CONFIG_JSON:
                key = DOCKER_CONFIG_JSON_KEY
            elif kind == DOCKERCFG:
                key = DOCKERCFG_KEY
            else:
                continue
            encoded = (secret.get("data") or {}).get(key)
            if not encoded:
                continue
            where = f"secret {name}"
            try:
                raw = base64.b64decode(encoded, validate=True)
                doc = orjson.loads(raw)
            except (binascii.Error, ValueError, TypeError):
                raise KeychainError(f"{where}: {key} is not base64-encoded JSON") from None
            if kind == DOCKER_CONFIG_JSON:
                if not isinstance(doc, Mapping):
                    raise KeychainError(f"{where}: {key} must be a JSON object")
                auths = _get_ci(doc, "auths")
            else:
                auths = doc
            entries.extend(cls._entries(auths, f"secret {name}", where))
        return cls(entries)

    @classmethod
    def from_docker_config(cls, config: Mapping[str, Any], *, source: str = "docker config") -> Keychain:
        """A keychain from a docker ``config.json`` document (``{"auths": {...}}``)."""
        return cls(cls._entries(_get_ci(config, "auths"), source, source))

    @staticmethod
    def _entries(auths: Any, source: str, where: str) -> list[tuple[str, Credentials]]:
        if auths is None:
            return []
        if not isinstance(auths, Mapping):
            raise KeychainError(f"{where}: auths must be a JSON object")
        return [(_key_of(k, where), _credentials(v, source, where)) for k, v in auths.items()]

    def resolve(self, target: Registry | Repository | Reference | str) -> Credentials:
        """The credentials for a repository (or a reference's repository, or a whole registry),
        ``ANONYMOUS`` if none match."""
        image = target.name if isinstance(target, Registry) else as_repository(target).name
        split = _Split.of(image)
        if split is None:
            return ANONYMOUS
        for pattern in self._patterns:
            if pattern.matches(split):
                return self._creds[pattern.key]
        return ANONYMOUS

    def __len__(self) -> int:
        return len(self._creds)

    def __repr__(self) -> str:
        return f"Keychain({self._index!r})"


# Keychains by the Secret versions they were made from (Keychain.from_secrets); oldest dropped first.
_KEYCHAINS: dict[tuple[tuple[str, str], ...], Keychain] = {}
_KEYCHAINS_KEPT = 1024
