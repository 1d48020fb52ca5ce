"""What a registry client remembers between operations, in one object with bounded sizes.

A controller talks to the same few registries for months, so whatever it learns once (how a registry is
reached, how it wants to be authenticated, the tokens it handed out, the configs of immutable blobs) saves
a round trip on every later reconcile. Kept in one place, each memory has a size limit (a client that met
many registries or scopes forgets the least recently used ones rather than grow without end), and a caller
may pass its own — sized differently, shared by several clients, or fresh for a test — instead of the one
``RegistryClient`` makes. Forgetting anything here only costs requests: nothing in it is needed for
correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from service.registry.transport import Challenge

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-used mapping holding at most ``size`` entries (0: keeps nothing)."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        self.size = max(0, size)
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


@dataclass(frozen=True, slots=True)
class CachedToken:
    value: str
    expires: float  # time.monotonic()


class RegistryCache:
    """The client's memories, each bounded:

    * ``bases`` — registry ``host[:port]`` → ``https://host[:port]`` or ``http://…`` (what the ``/v2/``
      probe found; dropped after a connection failure);
    * ``challenges`` — registry → its ``WWW-Authenticate`` challenge (scheme, realm and service only);
    * ``tokens`` — (registry, scope, credentials fingerprint) → bearer token with its expiry;
    * ``configs`` — (registry, repository path, digest) → the config blob's bytes (content-addressed, so
      never stale)."""

    __slots__ = ("bases", "challenges", "configs", "tokens")

    def __init__(
        self, *, configs: int = 256, tokens: int = 1024, challenges: int = 1024, bases: int = 1024
    ) -> None:
        self.configs: BoundedCache[tuple[str, str, str], bytes] = BoundedCache(configs)
        self.tokens: BoundedCache[tuple[str, str, str], CachedToken] = BoundedCache(tokens)
        self.challenges: BoundedCache[str, Challenge] = BoundedCache(challenges)
        self.bases: BoundedCache[str, str] = BoundedCache(bases)


__all__ = ["BoundedCache", "CachedToken", "RegistryCache"]
