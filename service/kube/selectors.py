"""Label and field selectors: parsing (with apimachinery's grammar and errors) and matching."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.kube.names import label_value_errors, qualified_name_errors


class SelectorError(ValueError):
    """A selector string that does not parse; the server answers it with 400 BadRequest."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        if self.op in ("!=", "notin"):
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            have, want = int(labels[self.key]), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.op == "gt" else have < want

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        sym = {"gt": ">", "lt": "<"}.get(self.op, self.op)
        return f"{self.key}{sym}{self.values[0]}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = LabelSelector()

_TOKEN = re.compile(r"\s*(==|!=|=|\(|\)|,|!|>|<|[^\s=!(),<>]+)")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos} in {text!r}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _check_key(key: str) -> None:
    errs = qualified_name_errors(key)
    if errs:
        raise SelectorError(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{key}": {errs[0]}'
        )


def _check_value(key: str, value: str) -> None:
    errs = label_value_errors(value)
    if errs:
        raise SelectorError(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{value}": {errs[0]}'
        )


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the ``labelSelector`` query syntax (equality- and set-based)."""
    if not text or not text.strip():
        return EVERYTHING
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise SelectorError(f"unable to parse requirement: {what} in {text!r}")

    while i < len(toks):
        if toks[i] == "!":
            need(i + 1 < len(toks), "found '', expected: identifier after '!'")
            key = toks[i + 1]
            _check_key(key)
            reqs.append(Requirement(key, "!"))
            i += 2
        else:
            key = toks[i]
            need(
                key not in ("=", "==", "!=", "(", ")", ",", ">", "<"), f"found '{key}', expected: identifier"
            )
            _check_key(key)
            i += 1
            if i >= len(toks) or toks[i] == ",":
                reqs.append(Requirement(key, "exists"))
            else:
                op = toks[i]
                i += 1
                if op in ("=", "==", "!="):
                    value = ""
                    if i < len(toks) and toks[i] != ",":
                        value = toks[i]
                        i += 1
                    _check_value(key, value)
                    reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
                elif op in ("in", "notin"):
                    need(
                        i < len(toks) and toks[i] == "(",
                        f"found '{toks[i] if i < len(toks) else ''}', expected: '('",
                    )
                    i += 1
                    values: list[str] = []
                    while i < len(toks) and toks[i] != ")":
                        if toks[i] == ",":
                            i += 1
                            continue
                        _check_value(key, toks[i])
                        values.append(toks[i])
                        i += 1
                    need(i < len(toks), "found '', expected: ')'")
                    i += 1
                    need(
                        bool(values) or op == "notin",
                        "for 'in', 'notin' operators, values set can't be empty",
                    )
                    reqs.append(Requirement(key, op, tuple(sorted(set(values)))))
                elif op in (">", "<"):
                    need(i < len(toks), "found '', expected: value")
                    value = toks[i]
                    i += 1
                    need(
                        value.lstrip("-").isdigit(),
                        f"for 'Gt', 'Lt' operators, the value must be an integer: {value}",
                    )
                    reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
                else:
                    raise SelectorError(
                        f"unable to parse requirement: found '{op}', expected: in, notin, =, ==, !=, gt, lt"
                    )
        if i < len(toks):
            need(toks[i] == ",", f"found '{toks[i]}', expected: ','")
            i += 1
            need(i < len(toks), "found '', expected: identifier after ','")
    return LabelSelector(tuple(reqs))


def selector_from_dict(selector: Mapping[str, Any] | None) -> LabelSelector:
    """A ``metav1.LabelSelector`` object (matchLabels / matchExpressions) as a selector."""
    if not selector:
        return EVERYTHING
    reqs = [Requirement(k, "=", (str(v),)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(Requirement(expr["key"], op, tuple(sorted(expr.get("values") or ()))))
    return LabelSelector(tuple(reqs))


def format_labels(labels: Mapping[str, str]) -> str:
    """``{"a": "b"}`` as the selector string ``a=b`` (for building queries)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """Field selectors on ``metadata.name`` / ``metadata.namespace``: all that custom resources support."""

    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        for field, equal, value in self.terms:
            actual = meta.get(field.removeprefix("metadata."), "") or ""
            if (actual == value) != equal:
                return False
        return True

    @property
    def name(self) -> str | None:
        """The single name an equality term pins, if any (lets a server answer without a scan)."""
        for field, equal, value in self.terms:
            if field == "metadata.name" and equal:
                return value
        return None


SUPPORTED_FIELDS = ("metadata.name", "metadata.namespace")


def parse_field_selector(text: str | None, supported: Iterable[str] = SUPPORTED_FIELDS) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    allowed = set(supported)
    terms = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+)(==|!=|=)(.*)$", part)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field not in allowed:
            raise SelectorError(f"field label not supported: {field}")
        terms.append((field, op != "!=", value))
    return FieldSelector(tuple(terms))
