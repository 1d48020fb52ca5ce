"""knative's ``apis.FieldError``: how kpack's validation errors are built, merged and printed.

A refused write's message is ``FieldError.Error()`` verbatim, and clients (and their tests) match it, so
the path arithmetic (``ViaField``, ``ViaIndex``, the ``flatten`` that turns ``foo.[0]`` into ``foo[0]``),
the merge of errors with equal message and details, and the sort by message follow
``knative.dev/pkg/apis/field_error.go``. ``None`` plays Go's nil ``*FieldError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def _flatten(parts: Iterable[str]) -> str:
    out: list[str] = []
    for part in parts:
        for p in part.split("."):
            if p == "":
                continue
            if out and p.startswith("[") and p.endswith("]"):
                out[-1] += p
            else:
                out.append(p)
    return ".".join(out)


@dataclass
class FieldError:
    message: str = ""
    paths: list[str] = field(default_factory=list)
    details: str = ""
    errors: list[FieldError] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.message and not self.details and not self.errors and not self.paths

    def via_field(self, *prefix: str) -> FieldError:
        out = FieldError(self.message, [_flatten([*prefix, p]) for p in self.paths], self.details)
        for e in self.errors:
            out = also(out, e.via_field(*prefix)) or FieldError()
        return out

    def via_index(self, index: int) -> FieldError:
        return self.via_field(f"[{index}]")

    def leaves(self) -> list[FieldError]:
        out = [FieldError(self.message, list(self.paths), self.details)] if self.message else []
        for e in self.errors:
            out.extend(e.leaves())
        return out

    def error(self) -> str:
        merged: dict[tuple[str, str], FieldError] = {}
        for e in self.leaves():
            key = (e.message, e.details)
            if key in merged:
                merged[key].paths += [p for p in e.paths if p not in merged[key].paths]
            else:
                merged[key] = e
        lines = []
        for e in sorted(merged.values(), key=lambda e: (e.message, e.details)):
            text = f"{e.message}: {', '.join(sorted(e.paths))}"
            lines.append(f"{text}\n{e.details}" if e.details else text)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.error()


def also(first: FieldError | None, *more: FieldError | None) -> FieldError | None:
    """``fe.Also(errs...)``: nil-safe collection (a nil or empty error adds nothing)."""
    rest = [e for e in more if e is not None and not e.empty()]
    if not rest:
        return first
    if first is not None and not first.empty():
        out = FieldError(first.message, list(first.paths), first.details, list(first.errors))
    else:
        out = FieldError()
    out.errors.extend(rest)
    return None if out.empty() else out


def via(err: FieldError | None, *prefix: str) -> FieldError | None:
    return None if err is None else err.via_field(*prefix)


def via_index(err: FieldError | None, index: int) -> FieldError | None:
    return None if err is None else err.via_index(index)


def missing(*paths: str) -> FieldError:
    return FieldError("missing field(s)", list(paths))


def invalid(value: object, path: str, *details: str) -> FieldError:
    return FieldError(f"invalid value: {value}", [path], ", ".join(details))


def generic(message: str, *paths: str) -> FieldError:
    return FieldError(message, list(paths))


def missing_one_of(*paths: str) -> FieldError:
    return FieldError("expected exactly one, got neither", list(paths))


def multiple_one_of(*paths: str) -> FieldError:
    return FieldError("expected exactly one, got both", list(paths))


def disallowed(*paths: str) -> FieldError:
    return FieldError("must not set the field(s)", list(paths))


def invalid_key_name(key: str, path: str, *details: str) -> FieldError:
    return FieldError(f'invalid key name "{key}"', [path], ", ".join(details))
