"""What can go wrong when talking to a registry, as a few types a reconciler can act on.

A reconciler needs two things from a registry failure: whether trying again later can help, and a message
that an operator can act on when it shows up as a condition on a Kubernetes object. So every error here
carries one line of text that names the registry (never a password or token), and ``temporary`` says
whether a retry may succeed. The registry's own error code (``MANIFEST_UNKNOWN``...) is kept when there
is one.
"""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"\s+")
MAX_DETAIL = 300  # characters of server-provided text kept in a message


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """Server-provided text made fit for a condition message: whitespace collapsed, length capped."""
    flat = _WHITESPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class RegistryError(Exception):
    """Base class. ``registry`` is the host[:port] the operation was addressed to ("" if none).
    ``expected``: ordinary weather, not a bug — the runtime logs it without a traceback."""

    temporary = False
    expected = True

    def __init__(self, message: str, *, registry: str = "") -> None:
        super().__init__(one_line(message, 1000))
        self.message = one_line(message, 1000)
        self.registry = registry

    def __str__(self) -> str:
        return self.message


class InvalidReference(RegistryError, ValueError):
    """An image reference or repository name that go-containerregistry's ``name`` package would reject."""


class KeychainError(RegistryError, ValueError):
    """A pull secret whose content cannot be read (bad base64, bad JSON, a bad ``auth`` field)."""


class NotFound(RegistryError):
    """The registry has no such manifest, repository or blob (``MANIFEST_UNKNOWN``, ``NAME_UNKNOWN``...)."""

    def __init__(self, message: str, *, registry: str = "", code: str = "") -> None:
        super().__init__(message, registry=registry)
        self.code = code


class Unauthorized(RegistryError):
    """The registry (or its token server) refused us: no matching credentials, or wrong ones (401/403)."""

    def __init__(self, message: str, *, registry: str = "", status: int = 401, code: str = "") -> None:
        super().__init__(message, registry=registry)
        self.status = status
        self.code = code


class Unreachable(RegistryError):
    """No HTTP answer at all: DNS failure, connection refused or reset, TLS handshake failure."""

    temporary = True


class RegistryTimeout(RegistryError, TimeoutError):
    """The operation did not finish within its deadline."""

    temporary = True


class UnexpectedResponse(RegistryError):
    """An HTTP answer we cannot use: an unexpected status (with the registry's error code and message when
    its body has them), or a malformed token response."""

    def __init__(self, message: str, *, registry: str = "", status: int = 0, code: str = "") -> None:
        super().__init__(message, registry=registry)
        self.status = status
        self.code = code
        self.temporary = status in (408, 429) or status >= 500


class InvalidImage(RegistryError):
    """The registry answered, but the content is not a usable linux/amd64 image: digest mismatch,
    unparsable manifest or config, no linux/amd64 entry in an index, a bad exposed port."""
