"""Backend options as data: each backend declares, per precision, the options
it takes with their defaults and what values are valid; :func:`resolve`
checks a user's options against that schema when the spec is validated
(before any work) and returns the defaults overlaid with the user's values.

Resolution is idempotent (a resolved dict resolves to itself, also after a
JSON round trip), so ``compile`` may resolve again what it is given.
Every error is one line naming the option and the valid values.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import TargetError


class Invalid(ValueError):
    """A value an option does not take (its message is the hint)."""


@dataclass(frozen=True)
class Option:
    """One option: its default and a parser that returns the canonical value or raises Invalid."""

    default: object
    parse: Callable[[object], object]
    hint: str

    def __call__(self, value):
        return self.parse(value)


def flag(default: bool) -> Option:
    def parse(v):
        if not isinstance(v, bool):  # "False" from a CLI string must not read as True
            raise Invalid("write true or false")
        return v
    return Option(default, parse, "write true or false")


def integer(default: int | None, *, lo: int | None = None, hi: int | None = None, power_of_two: bool = False,
            none: bool = False) -> Option:
    where = ([f">= {lo}"] if lo is not None else []) + ([f"<= {hi}"] if hi is not None else [])
    hint = ("a power of two >= 16 (e.g. 32, 64, 128)" if power_of_two
            else "an integer" + (f" {' and '.join(where)}" if where else ""))

    def parse(v):
        if v is None and none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"use {hint}")
        if (lo is not None and v < lo) or (hi is not None and v > hi) or (power_of_two and (v < 16 or v & (v - 1))):
            raise Invalid(f"use {hint}")
        return v
    return Option(default, parse, hint)


def number(default: float | None, *, lo: float | None = None, hi: float | None = None, open_lo: bool = False,
           words: Sequence[str] = (), none: bool = False) -> Option:
    span = f"in {'(' if open_lo else '['}{lo}, {hi}]" if lo is not None and hi is not None else ""
    hint = "a number" + (f" {span}" if span else "") + (f" or {', '.join(map(repr, words))}" if words else "")

    def parse(v):
        if v is None and none:
            return None
        if isinstance(v, str) and v.lower() in words:
            return v.lower()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Invalid(f"use {hint}")
        v = float(v)
        if lo is not None and (v < lo or (open_lo and v == lo)):
            raise Invalid(f"use {hint}")
        if hi is not None and v > hi:
            raise Invalid(f"use {hint}")
        return v
    return Option(default, parse, hint)


def one_or_many(one: Option, example: str, *, alone: Sequence[str] = ()) -> Option:
    """One value of ``one``, or a list of distinct candidates (a tuple; the recipe chooses among
    them). A one-element list is that value; the words in ``alone`` (e.g. ``auto``) are never candidates."""
    hint = f"{one.hint}, or a list of distinct such values (e.g. {example})"

    def parse(v):
        if not isinstance(v, (list, tuple)):
            try:
                return one(v)
            except Invalid:
                raise Invalid(f"use {hint}") from None
        try:
            values = tuple(one(x) for x in v)
        except Invalid:
            raise Invalid(f"use {hint}") from None
        if not values or len(set(values)) != len(values) or (len(values) > 1 and set(values) & set(alone)):
            raise Invalid(f"use {hint}")
        return values[0] if len(values) == 1 else values
    return Option(one.default, parse, hint)


def number_or_numbers(default: float, *, lo: float, hi: float) -> Option:
    """One number, or a list of distinct candidates."""
    return one_or_many(number(default, lo=lo, hi=hi), "[0.85, 1.0]")


def choice(default, values: Sequence) -> Option:
    """One of ``values``; strings match case-insensitively and come out spelled as listed."""
    hint = f"choose one of: {', '.join(map(str, values))}"

    def parse(v):
        for allowed in values:
            if v == allowed and type(v) is type(allowed):
                return allowed
            if isinstance(v, str) and isinstance(allowed, str) and v.lower() == allowed.lower():
                return allowed
        raise Invalid(hint)
    return Option(default, parse, hint)


def text(default: str | None) -> Option:
    def parse(v):
        if v is None or not isinstance(v, str) or not v.strip():
            raise Invalid("use a non-empty string")
        return v
    return Option(default, parse, "a string")


def patterns() -> Option:
    """Module-path patterns (the one exclusion grammar, see :mod:`embedc.onnxkit.scopes`)."""
    from ..onnxkit.scopes import PATTERN_HINT, parse_patterns

    def parse(v):
        try:
            return parse_patterns(v)
        except ValueError as exc:
            raise Invalid(f"{exc}; {PATTERN_HINT}") from None
    return Option((), parse, PATTERN_HINT)


def resolve(schema: Mapping[str, Option], given: Mapping, where: str) -> dict:
    """Defaults overlaid with ``given``; unknown keys and bad values raise TargetError (exit 2)."""
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise TargetError(f"unknown option {unknown[0]!r} for {where}",
                          f"valid options: {', '.join(sorted(schema)) or 'none'}")
    out = {k: opt.default for k, opt in schema.items()}
    for key, value in given.items():
        try:
            out[key] = schema[key](value)
        except Invalid as exc:
            raise TargetError(f"option {key}={value!r} is invalid for {where}", str(exc)) from None
    return out


def jsonable(options: Mapping) -> dict:
    """Options as JSON values (tuples become lists) for recipes and cache keys."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
