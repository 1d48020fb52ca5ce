"""Kubernetes resource quantities, parsed and printed as apimachinery's ``resource.Quantity`` does (used by
the kpack simulator's webhooks and by the reconcilers, which compare cache sizes).

kpack's defaulting webhook decodes every object into Go types and encodes it again, so a quantity a client
writes (``spec.cache.volume.size``, ``spec.build.resources``) comes back in Go's canonical form: ``2048Mi``
reads back as ``2Gi`` and ``1024000000`` as ``1024M``. A client that compares what it wrote with what it
reads must see the same strings here as against a real cluster, so the parser and printer follow
``k8s.io/apimachinery/pkg/api/resource`` (``quantity.go``, ``amount.go``, ``suffix.go``) step by step,
including the cached original string Go keeps for input already in canonical form.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Literal

Format = Literal["DecimalExponent", "BinarySI", "DecimalSI"]

FORMAT_WRONG = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
ERR_SUFFIX = "unable to parse quantity's suffix"
ERR_NUMERIC = "unable to parse numeric part of quantity"

_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_BY_EXP = {v: k for k, v in _DECIMAL_SUFFIXES.items()}
_BINARY_BY_EXP = {v: k for k, v in _BINARY_SUFFIXES.items()}
_MAX_INT64_FACTORS = 18
_INT64_MAX = 2**63 - 1
_MAX_ALLOWED = Decimal(2**63 - 1)  # apimachinery caps BinarySI at int64's maximum
_DIGITS = "0123456789"


class QuantityError(ValueError):
    """A string ``ParseQuantity`` refuses; the message is apimachinery's."""


@dataclass(frozen=True, slots=True)
class Quantity:
    value: Decimal
    format: Format
    cached: str = ""  # the input string, kept when it was already canonical (Go's ``Quantity.s``)

    def __str__(self) -> str:
        return self.cached or canonical(self.value, self.format)

    def cmp(self, other: Quantity) -> int:
        return (self.value > other.value) - (self.value < other.value)


ZERO = Quantity(Decimal(0), "DecimalSI")


def _split(text: str) -> tuple[bool, str, str, str, str]:
    """apimachinery's ``parseQuantityString``: sign, numeric value, numerator, denominator, suffix."""
    positive, pos, end = True, 0, len(text)
    if pos < end and text[0] in "+-":
        positive = text[0] != "-"
        pos += 1
    while True:  # strip leading zeros
        if pos >= end:
            return positive, "0", "0", "", ""
        if text[pos] != "0":
            break
        pos += 1
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos >= end:
        return positive, text, text[start:] or "0", "", ""
    num = text[start:pos] or "0"
    denom = ""
    if text[pos] == ".":
        pos += 1
        dstart = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[dstart:pos]
        if pos >= end:
            return positive, text, num, denom, ""
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in "eEinumkKMGTP":
        pos += 1
    if pos >= end:
        return positive, value, num, denom, text[suffix_start:]
    if text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos >= end:
        return positive, value, num, denom, text[suffix_start:]
    raise QuantityError(FORMAT_WRONG)


def _interpret(suffix: str) -> tuple[int, int, Format]:
    if suffix in _DECIMAL_SUFFIXES:
        return 10, _DECIMAL_SUFFIXES[suffix], "DecimalSI"
    if suffix in _BINARY_SUFFIXES:
        return 2, _BINARY_SUFFIXES[suffix], "BinarySI"
    if len(suffix) > 1 and suffix[0] in "eE":
        try:
            return 10, int(suffix[1:]), "DecimalExponent"
        except ValueError:
            pass
    raise QuantityError(ERR_SUFFIX)


def parse(text: str) -> Quantity:
    """``resource.ParseQuantity``."""
    if not text:
        raise QuantityError(FORMAT_WRONG)
    if text == "0":
        return Quantity(Decimal(0), "DecimalSI", text)
    positive, value, num, denom, suffix = _split(text)
    base, exponent, fmt = _interpret(suffix)
    sign = 1 if positive else -1
    precision, scale, mantissa = 0, 0, 1
    if fmt == "BinarySI":
        if exponent >= 0 and not denom:
            mantissa = 1 << exponent
            precision = 15 - len(num) - int(exponent * 3 / 10) - 1
        else:
            precision = -1
    else:
        scale = exponent
        precision = _MAX_INT64_FACTORS - (len(num) + len(denom))
    if precision >= 0:
        scale -= len(denom)
        if scale >= -9:
            shifted = num + denom
            whole = int(shifted)
            if whole > _INT64_MAX:
                raise QuantityError(ERR_NUMERIC)
            result = whole * mantissa
            if result <= _INT64_MAX:
                amount = Decimal(sign * result).scaleb(scale)
                keep = (
                    exponent % 10 == 0 and whole & 0x07 != 0
                    if fmt == "BinarySI"
                    else scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
                )
                return Quantity(amount, fmt, text if keep else "")
    with localcontext() as ctx:
        ctx.prec = 200
        try:
            amount = abs(Decimal(value))
        except ArithmeticError:
            raise QuantityError(ERR_NUMERIC) from None
        amount = amount.scaleb(exponent) if base == 10 else amount * (Decimal(2) ** exponent)
        if amount != 0:
            amount = amount.quantize(Decimal("1e-9"), rounding=ROUND_CEILING)
        if fmt == "BinarySI" and amount > _MAX_ALLOWED:
            amount = _MAX_ALLOWED
        if fmt == "BinarySI" and 0 < amount < 1:
            fmt = "DecimalSI"
        return Quantity(sign * amount if amount else Decimal(0), fmt)


def _mantissa_exponent(value: Decimal) -> tuple[int, int]:
    sign, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    mantissa = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    while mantissa and mantissa % 10 == 0:
        mantissa //= 10
        exp += 1
    return mantissa, exp


def canonical(value: Decimal, fmt: Format) -> str:
    """``Quantity.CanonicalizeBytes``: the string Go writes for this quantity."""
    if value == 0:
        return "0"
    if fmt == "BinarySI" and (-1024 < value < 1024 or value != value.to_integral_value(rounding=ROUND_FLOOR)):
        fmt = "DecimalSI"
    if fmt == "BinarySI":
        amount, exp = int(value), 0
        while amount % 1024 == 0:
            amount //= 1024
            exp += 10
        return f"{amount}{_BINARY_BY_EXP.get(exp, '')}"
    mantissa, exp = _mantissa_exponent(value)
    while exp % 3 != 0:
        mantissa *= 10
        exp -= 1
    if fmt == "DecimalExponent":
        return f"{mantissa}e{exp}" if exp else str(mantissa)
    return f"{mantissa}{_DECIMAL_BY_EXP.get(exp, '')}"
