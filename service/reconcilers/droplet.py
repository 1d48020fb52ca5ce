"""The droplet: what a successful build hands back to Korifi (reference: korifi.md §5).

Process types come from the ``io.buildpacks.build.metadata`` label of the built image's config, ports from
its ``ExposedPorts``, the stack from the kpack Build, pull secrets from the builder service account. All
pure functions: the caller fetches the image config and the service account.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from service.reconcilers.korifi import BUILD_METADATA_LABEL

Obj = dict[str, Any]

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


class DropletError(ValueError):
    """The image's metadata cannot be turned into a droplet; the message is fit for a condition."""


def _go_printable(char: str) -> bool:
    """Go's ``unicode.IsPrint``: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` (``strconv.Quote``) writes it, so commands read exactly as Korifi's do."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif _go_printable(char):
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DropletError(f"failed to unmarshal build metadata: {what} is not a list of strings")
    return value


def process_types(build_metadata: str | None) -> list[Obj]:
    """``[{type, command}]`` from the build metadata label, in label order.

    The command is the process command followed by each argument Go-quoted (Korifi's format). Buildpack
    platform API 0.10 and later write ``command`` as a list (the executable and its fixed arguments);
    Korifi fails on that, here the executable comes first and every further element is quoted like an
    argument.
    """
    if build_metadata is None:
        raise DropletError(
            "failed to unmarshal build metadata: the image has no io.buildpacks.build.metadata label"
        )
    try:
        metadata = orjson.loads(build_metadata)
    except orjson.JSONDecodeError as exc:
        raise DropletError(f"failed to unmarshal build metadata: {exc}") from None
    if not isinstance(metadata, dict):
        raise DropletError("failed to unmarshal build metadata: not a JSON object")
    processes = metadata.get("processes") or []
    if not isinstance(processes, list):
        raise DropletError("failed to unmarshal build metadata: processes is not a list")
    out = []
    for process in processes:
        if not isinstance(process, dict) or not isinstance(process.get("type"), str):
            raise DropletError("failed to unmarshal build metadata: a process has no type")
        command = process.get("command")
        if isinstance(command, str):
            head, rest = command, list[str]()
        else:
            parts = _strings(command, f"the command of process {process['type']!r}")
            head, rest = (parts[0], parts[1:]) if parts else ("", [])
        args = rest + _strings(process.get("args"), f"the args of process {process['type']!r}")
        out.append({"type": process["type"], "command": " ".join([head, *(go_quote(a) for a in args)])})
    return out


def stable_ports(ports: Iterable[int]) -> list[int]:
    """Ascending and without repeats: Korifi returns them in Go map order, which changes from run to run,
    and repeats a port exposed for two protocols."""
    return sorted(set(ports))


def droplet(
    image: str,
    stack: str,
    labels: Mapping[str, str] | None,
    ports: Iterable[int],
    secrets: Iterable[Obj],
    cache_image: str = "",
) -> Obj:
    """The workload's ``status.droplet``; raises ``DropletError`` for unusable metadata. ``cacheImage`` (the
    registry cache the build wrote, by digest) is this service's addition: Korifi's CRD prunes it."""
    registry: Obj = {"image": image}
    if secrets := list(secrets):
        registry["imagePullSecrets"] = secrets  # omitted when empty, as Korifi's omitempty
    out = {
        "registry": registry,
        "stack": stack,
        "processTypes": process_types((labels or {}).get(BUILD_METADATA_LABEL)),
        "ports": stable_ports(ports),
    }
    if cache_image:
        out["cacheImage"] = cache_image
    return out
