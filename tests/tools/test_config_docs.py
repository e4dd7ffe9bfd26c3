"""chimera.example.toml is the config's documentation (the README says every key is
documented there): every field of the config Structs appears in it with its default and
a comment that names a Literal's allowed values and a number's bounds, and it parses."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from chimera_core.config import Config, parse_config
from chimera_core.markets import PRESETS
from tests.loopback import REPO

EXAMPLE = REPO / "chimera.example.toml"
# Active keys whose value is an example, not the default (the comment says the default).
EXAMPLE_VALUES = {("execution", "angelone", "symbols")}

# [table] or [[array.of.tables]]: an array's element keys are documented under the
# array's path and "[]" (research.studies.[].name).
_HEADER = re.compile(r"^(#\s*)?(\[\[?)([A-Za-z0-9_.]+)\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_CONTINUATION = re.compile(r"^\s+#\s?(.*)$")  # an indented comment carries on the key's


@dataclass
class Line:
    """One key in the example: where, whether commented out, and its comment."""

    path: tuple[str, ...]
    commented: bool
    number: int
    comment: str = ""


@dataclass
class Example:
    lines: list[Line] = field(default_factory=list)
    text: str = ""


def _split_comment(rest: str) -> tuple[str, str]:
    """``value  # comment`` -> (value, comment), a ``#`` inside a string is not one."""
    quote = ""
    i = 0
    while i < len(rest):
        c = rest[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            return rest[:i].strip(), rest[i + 1 :].strip()
        i += 1
    return rest.strip(), ""


def _read_example() -> Example:
    text = EXAMPLE.read_text(encoding="utf-8")
    example = Example(text=text)
    table: tuple[str, ...] = ()
    last: Line | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if last is not None and (m := _CONTINUATION.match(raw)):
            last.comment += " " + m.group(1)
            continue
        last = None
        if m := _HEADER.match(raw):
            table = tuple(m.group(3).split(".")) + (("[]",) if m.group(2) == "[[" else ())
            continue
        if m := _KEY.match(raw):
            _, comment = _split_comment(m.group(3))
            last = Line((*table, m.group(2)), bool(m.group(1)), number, comment)
            example.lines.append(last)
    return example


def _unwrap(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """``X | None`` -> X (the markets' keys are optional: a missing one keeps the preset)."""
    if isinstance(t, msgspec.inspect.UnionType):
        (t,) = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
    return t


def _fields(
    t: msgspec.inspect.Type, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], msgspec.inspect.Type]:
    """Every key path of the config tree; a table of tables ([markets.NAME]) as ``*``."""
    out = {}
    assert isinstance(t, msgspec.inspect.StructType)
    for f in t.fields:
        ft = _unwrap(f.type)
        path = (*prefix, f.encode_name)
        if isinstance(ft, msgspec.inspect.StructType):
            out |= _fields(ft, path)
        elif isinstance(ft, msgspec.inspect.DictType) and isinstance(
            ft.value_type, msgspec.inspect.StructType
        ):
            out |= _fields(ft.value_type, (*path, "*"))
        elif isinstance(ft, msgspec.inspect.ListType) and isinstance(
            ft.item_type, msgspec.inspect.StructType
        ):
            out[path] = ft  # the array itself ([] by default) and each element's keys
            out |= _fields(ft.item_type, (*path, "[]"))
        else:
            out[path] = ft
    return out


FIELDS = _fields(msgspec.inspect.type_info(Config))


def _schema_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """A key path of the example as a FIELDS path: markets.NSE_CM.open -> markets.*.open."""
    out: list[str] = []
    t: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for i, part in enumerate(path):
        if isinstance(t, msgspec.inspect.DictType):
            out.append("*")
            t = t.value_type
            continue
        if isinstance(t, msgspec.inspect.ListType) and part == "[]":
            out.append("[]")
            t = t.item_type
            continue
        if not isinstance(t, msgspec.inspect.StructType):
            return tuple(path)
        found = [f for f in t.fields if f.encode_name == part]
        if not found:
            return tuple(path[: i + 1])
        out.append(part)
        t = _unwrap(found[0].type)
    return tuple(out)


def _by_field(example: Example) -> dict[tuple[str, ...], list[Line]]:
    out: dict[tuple[str, ...], list[Line]] = {}
    for line in example.lines:
        out.setdefault(_schema_path(line.path), []).append(line)
    return out


EX = _read_example()
BY_FIELD = _by_field(EX)
KEYS = sorted(FIELDS)


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path)


def test_every_config_key_is_in_the_example():
    missing = [_name(p) for p in KEYS if p not in BY_FIELD]
    assert not missing, f"chimera.example.toml lacks {missing}"
    unknown = [_name(line.path) for p, ls in BY_FIELD.items() if p not in FIELDS for line in ls]
    assert not unknown, f"chimera.example.toml has keys no config Struct knows: {unknown}"


def test_the_example_parses_as_written_and_with_its_commented_keys_uncommented():
    parse_config(EX.text, str(EXAMPLE))
    # The commented-out tables and keys are examples to uncomment: they must work too.
    commented = {line.number for line in EX.lines if line.commented}
    # `studies = []` documents the array; its uncommented [[...]] tables take its place.
    arrays = {
        line.number for line in EX.lines
        if isinstance(FIELDS.get(_schema_path(line.path)), msgspec.inspect.ListType)
        and isinstance(FIELDS[_schema_path(line.path)].item_type, msgspec.inspect.StructType)
    }  # fmt: skip
    out = []
    for number, raw in enumerate(EX.text.splitlines(), 1):
        if number in arrays:
            continue
        m = _HEADER.match(raw)
        if number in commented or (m and m.group(1)):
            raw = raw.lstrip("#").lstrip()
        out.append(raw)
    assert commented, "the example should show a commented-out table (e.g. [markets.US])"
    parse_config("\n".join(out), f"{EXAMPLE} (commented keys uncommented)")


def _default(path: tuple[str, ...]) -> Any:
    if path[0] == "markets":  # a market's default is its preset (generic for other names)
        preset = PRESETS.get(path[1], PRESETS["generic"])
        return msgspec.to_builtins(getattr(preset, path[2]))
    value: Any = msgspec.to_builtins(Config())
    for part in path:
        value = value[part]
    return value


def test_active_keys_show_their_defaults():
    raw = tomllib.loads(EX.text)
    wrong = []
    for line in EX.lines:
        if line.commented:
            continue
        value: Any = raw
        for part in line.path:
            value = value[part]
        if line.path in EXAMPLE_VALUES:
            assert "default" in line.comment, f"{_name(line.path)}: say what the default is"
            continue
        if value != _default(line.path):
            wrong.append(f"{_name(line.path)} = {value!r} (default {_default(line.path)!r})")
    assert not wrong, f"line values that are not the defaults: {wrong}"


def _comment(path: tuple[str, ...]) -> str:
    return " ".join(line.comment for line in BY_FIELD.get(path, ()))


@pytest.mark.parametrize("path", KEYS, ids=_name)
def test_every_key_has_a_comment(path):
    assert _comment(path).strip(), f"{_name(path)} has no comment in chimera.example.toml"


def _literals(t: msgspec.inspect.Type) -> tuple[Any, ...]:
    if isinstance(t, msgspec.inspect.ListType):
        t = t.item_type
    return t.values if isinstance(t, msgspec.inspect.LiteralType) else ()


@pytest.mark.parametrize(
    "path", [p for p in KEYS if _literals(FIELDS[p])], ids=_name
)  # fmt: skip
def test_a_literal_keys_comment_names_every_allowed_value(path):
    words = set(re.findall(r"[A-Za-z0-9_]+", _comment(path)))
    missing = [v for v in _literals(FIELDS[path]) if str(v) not in words]
    assert not missing, f"{_name(path)}: the comment does not name {missing}"


_NUMBER = re.compile(r"(?<![\w.])\d[\d_,]*(?:\.\d+)?(?:e\d+)?(?![\w])")


def _canonical(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _numbers_as_values(text: str) -> str:
    """Numbers written 604_800, 604,800, 1e12 or 3600.0 read as one canonical form."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if "," in token and not re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", token):
            return token  # a list, "0, 1", not a thousands separator
        return _canonical(float(token.replace("_", "").replace(",", "")))

    return _NUMBER.sub(one, text)


def _bounds(t: msgspec.inspect.Type) -> str | None:
    """The phrase the comment must hold: "1 to 100" (inclusive, or any int above 0) or
    "above 0, up to 3600" (a float above its lower bound)."""
    if isinstance(t, msgspec.inspect.DictType):
        t = t.value_type
    if not isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType) or t.le is None:
        return None
    high = _canonical(t.le)
    if t.ge is not None:
        return f"{_canonical(t.ge)} to {high}"
    if t.gt is not None and isinstance(t, msgspec.inspect.IntType):
        return f"{t.gt + 1} to {high}"
    if t.gt is not None:
        return f"above {_canonical(t.gt)}, up to {high}"
    return f"up to {high}"


@pytest.mark.parametrize("path", [p for p in KEYS if _bounds(FIELDS[p])], ids=_name)
def test_a_numbers_comment_gives_its_bounds(path):
    phrase = _bounds(FIELDS[path])
    assert phrase is not None
    comment = _numbers_as_values(_comment(path))
    assert phrase in comment, f"{_name(path)}: the comment should say {phrase!r}: {comment!r}"


@pytest.mark.parametrize(
    "path",
    [p for p in KEYS if isinstance(FIELDS[p], msgspec.inspect.ListType) and FIELDS[p].max_length],
    ids=_name,
)
def test_a_lists_comment_gives_its_longest(path):
    most = f"at most {FIELDS[path].max_length}"
    comment = _numbers_as_values(_comment(path))
    assert most in comment, f"{_name(path)}: the comment should say {most!r}: {comment!r}"
