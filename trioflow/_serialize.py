"""Outputs and arguments as stored data: a tagged JSON encoding, a digest, and the pickle opt-in.

A stored output must structure back to the value the tool returned, so the encoding records
types where JSON would lose them: scalars and lists of them are bare JSON, while tuples, sets,
dicts with non-string keys, datetimes, enums, attrs classes and dataclasses are wrapped as
`{"$t": tag, "$v": payload}`. Leaf types (datetimes, bytes, UUIDs, ...) go through the one cattrs
converter; attrs classes and dataclasses are encoded field by field, so a field typed `Any`
round-trips too. A class is named by its import path and must be importable when read back.

The digest of a value is the hash of its canonical encoding (sorted keys, sorted sets): equal
argument values give equal digests across processes, which is what replay and caching key on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import importlib
import json
import pathlib
import pickle
import uuid
from collections.abc import Callable, Mapping
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Literal

import attrs

from ._convert import converter
from ._errors import ConfigError

__all__ = [
    "Serializer",
    "Unserialisable",
    "check_serializer",
    "digest",
    "json_text",
]

SerializerName = Literal["json", "pickle"]

_SCALARS = frozenset({str, int, float, bool, type(None)})
_TAG = "$t"
_VALUE = "$v"

# Leaf types that JSON lacks: tag -> type. The cattrs converter (un)structures each of them.
_LEAVES: dict[str, type] = {
    "datetime": dt.datetime,
    "date": dt.date,
    "time": dt.time,
    "timedelta": dt.timedelta,
    "bytes": bytes,
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "path": pathlib.PurePosixPath,
    "complex": complex,
}
_LEAF_TAGS: dict[type, str] = {cls: tag for tag, cls in _LEAVES.items()}
_LEAF_TAGS[pathlib.PosixPath] = "path"

converter.register_unstructure_hook(dt.time, lambda t: t.isoformat())
converter.register_structure_hook(dt.time, lambda v, _: dt.time.fromisoformat(v))
converter.register_unstructure_hook(dt.timedelta, lambda d: [d.days, d.seconds, d.microseconds])
converter.register_structure_hook(dt.timedelta, lambda v, _: dt.timedelta(*v))
converter.register_unstructure_hook(decimal.Decimal, str)
converter.register_structure_hook(decimal.Decimal, lambda v, _: decimal.Decimal(v))
converter.register_unstructure_hook(uuid.UUID, str)
converter.register_structure_hook(uuid.UUID, lambda v, _: uuid.UUID(v))
converter.register_unstructure_hook(pathlib.PurePath, str)
converter.register_structure_hook(pathlib.PurePosixPath, lambda v, _: pathlib.Path(v))
converter.register_unstructure_hook(complex, lambda c: [c.real, c.imag])
converter.register_structure_hook(complex, lambda v, _: complex(*v))


class Unserialisable(Exception):
    """A value has a type the JSON encoding cannot represent (`type_name` names it)."""

    def __init__(self, type_name: str, where: str, why: str = "") -> None:
        self.type_name = type_name
        self.where = where
        self.why = why
        super().__init__(f"{type_name} at {where}{': ' + why if why else ''}")


# -- classes by import path ----------------------------------------------------------------

_class_tags: dict[type, str] = {}
_tag_classes: dict[str, type] = {}


def _kind(cls: type) -> str | None:
    if issubclass(cls, enum.Enum):
        return "enum"
    if attrs.has(cls):
        return "attrs"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return "namedtuple"
    return None


def _class_tag(cls: type, where: str) -> str:
    found = _class_tags.get(cls)
    if found is not None:
        return found
    kind = _kind(cls)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if kind is None:
        raise Unserialisable(name, where)
    tag = f"{kind}:{cls.__module__}:{cls.__qualname__}"
    try:
        resolved = _resolve(tag)
    except Exception:
        resolved = None
    if resolved is not cls:
        raise Unserialisable(
            name, where, "the class cannot be imported by its name (define it at module level)"
        )
    _class_tags[cls] = tag
    return tag


def _resolve(tag: str) -> type:
    found = _tag_classes.get(tag)
    if found is not None:
        return found
    kind, module, qualname = tag.split(":", 2)
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type) or _kind(obj) != kind:
        raise TypeError(f"{module}.{qualname} is not a stored {kind} class")
    _tag_classes[tag] = obj
    return obj


# -- the tagged encoding ---------------------------------------------------------------------


def _sorted_json(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))


def encode(value: Any, where: str = "value", canonical: bool = False) -> Any:
    """A JSON-safe tree for `value` that `decode` turns back into an equal value.

    `canonical` also sorts the pairs of dicts with non-string keys, so that equal values give
    equal trees (string-keyed dicts are sorted by `json.dumps(sort_keys=True)`).
    """
    cls = type(value)
    if cls in _SCALARS:
        return value
    if cls is list:
        return [encode(v, f"{where}[{i}]", canonical) for i, v in enumerate(value)]
    if cls is dict:
        if _TAG not in value and all(type(k) is str for k in value):
            return {k: encode(v, f"{where}[{k!r}]", canonical) for k, v in value.items()}
        pairs = [
            [encode(k, f"{where} key", canonical), encode(v, f"{where}[{k!r}]", canonical)]
            for k, v in value.items()
        ]
        return {_TAG: "dict", _VALUE: _sorted_json(pairs) if canonical else pairs}
    if cls is tuple:
        items = [encode(v, f"{where}[{i}]", canonical) for i, v in enumerate(value)]
        return {_TAG: "tuple", _VALUE: items}
    if cls is set or cls is frozenset:
        items = _sorted_json([encode(v, f"{where} item", canonical) for v in value])
        return {_TAG: cls.__name__, _VALUE: items}
    leaf = _LEAF_TAGS.get(cls)
    if leaf is not None:
        return {_TAG: leaf, _VALUE: converter.unstructure(value, cls)}
    tag = _class_tag(cls, where)
    kind = tag.partition(":")[0]
    if kind == "enum":
        return {_TAG: tag, _VALUE: encode(value.value, f"{where}.value", canonical)}
    if kind == "namedtuple":
        items = [encode(v, f"{where}[{i}]", canonical) for i, v in enumerate(value)]
        return {_TAG: tag, _VALUE: items}
    return {_TAG: tag, _VALUE: _encode_fields(value, kind, where, canonical)}


def _encode_fields(value: Any, kind: str, where: str, canonical: bool) -> dict[str, Any]:
    if kind == "attrs":
        return {
            f.alias or f.name: encode(getattr(value, f.name), f"{where}.{f.name}", canonical)
            for f in attrs.fields(type(value))
            if f.init
        }
    return {
        f.name: encode(getattr(value, f.name), f"{where}.{f.name}", canonical)
        for f in dataclasses.fields(value)
        if f.init
    }


def decode(tree: Any) -> Any:
    """The value `encode` was given."""
    cls = type(tree)
    if cls is list:
        return [decode(v) for v in tree]
    if cls is not dict:
        return tree
    tag = tree.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in tree.items()}
    payload = tree[_VALUE]
    if tag == "dict":
        return {decode(k): decode(v) for k, v in payload}
    if tag == "tuple":
        return tuple(decode(v) for v in payload)
    if tag == "set":
        return {decode(v) for v in payload}
    if tag == "frozenset":
        return frozenset(decode(v) for v in payload)
    leaf = _LEAVES.get(tag)
    if leaf is not None:
        return converter.structure(payload, leaf)
    target: Any = _resolve(tag)
    kind = tag.partition(":")[0]
    if kind == "enum":
        return target(decode(payload))
    if kind == "namedtuple":
        return target(*(decode(v) for v in payload))
    return target(**{k: decode(v) for k, v in payload.items()})


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__qualname__} is not JSON data")


def _encoder(sort_keys: bool) -> Callable[[Any], str]:
    """A compact JSON encoder built once (`json.dumps(**options)` builds one per call)."""
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return json.JSONEncoder(separators=(",", ":"), sort_keys=sort_keys).encode
    chunks = c_make_encoder(
        None, _refuse, encode_basestring_ascii, None, ":", ",", sort_keys, False, True
    )
    return lambda value: "".join(chunks(value, 0))


_dumps = _encoder(sort_keys=False)
json_text = _dumps  # compact JSON text of plain JSON data (a scalar, as `dumps` writes it)


_canonical = _encoder(sort_keys=True)


def digest(values: Mapping[str, Any]) -> str:
    """A stable hash of argument values (canonical JSON); raises `Unserialisable`."""
    if all(type(v) in _SCALARS for v in values.values()):
        text = _canonical(values)  # the common case: scalar arguments
    else:
        text = _canonical(encode(dict(values), "argument", canonical=True))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _pickle_digest(values: Mapping[str, Any]) -> str:
    return hashlib.sha256(pickle.dumps(dict(values), protocol=5)).hexdigest()[:32]


# -- serializers ------------------------------------------------------------------------------


@attrs.frozen
class Serializer:
    """How a store writes outputs and inputs: `"json"` (default) or `"pickle"` (trusted data)."""

    name: SerializerName = "json"

    def dumps(self, value: Mapping[str, Any], where: str = "value") -> str | bytes:
        """Outputs or inputs (a dict of names) as stored text (json) or bytes (pickle)."""
        if self.name == "pickle":
            try:
                return pickle.dumps(dict(value), protocol=5)
            except Exception as exc:
                raise Unserialisable(_first_unpicklable(value), where, repr(exc)) from None
        out = value if type(value) is dict else dict(value)
        if len(out) == 1:  # the commonest case: one output, an int or a str (same text)
            ((key, item),) = out.items()
            kind = type(item)
            if kind is int and type(key) is str:
                return f"{{{encode_basestring_ascii(key)}:{int.__repr__(item)}}}"
            if kind is str and type(key) is str:
                return f"{{{encode_basestring_ascii(key)}:{encode_basestring_ascii(item)}}}"
        if all(type(v) in _SCALARS for v in out.values()):
            return _dumps(out)  # the common case: scalars only
        return _dumps({k: encode(v, f"{where} {k!r}") for k, v in out.items()})

    def loads(self, data: str | bytes) -> dict[str, Any]:
        """The dict that `dumps` was given."""
        if isinstance(data, bytes):
            if self.name != "pickle":
                raise ConfigError(
                    "this value was stored with serializer='pickle'; open the store with "
                    "serializer='pickle' to read it (only if you trust the file)"
                )
            result: dict[str, Any] = pickle.loads(data)
            return result
        tree = json.loads(data)
        if all(type(v) in _SCALARS for v in tree.values()):
            return tree  # type: ignore[no-any-return]  # decode returns scalars as they are
        return {k: decode(v) for k, v in tree.items()}

    def loads_many(self, blobs: list[str | bytes]) -> list[dict[str, Any]]:
        """`[self.loads(b) for b in blobs]`, with one JSON parse for all of them."""
        if self.name != "json" or not all(type(b) is str for b in blobs):
            return [self.loads(b) for b in blobs]
        try:
            return self.loads_array("[" + ",".join(blobs) + "]", len(blobs))  # type: ignore[arg-type]
        except ValueError:
            return [self.loads(b) for b in blobs]  # raises for the first bad one, as itself

    def loads_array(self, text: str, count: int) -> list[dict[str, Any]]:
        """The dicts of `count` JSON-stored values joined into one JSON array text, parsed at
        once; a `ValueError` when the text is not an array of `count` objects."""
        trees = json.loads(text)
        if type(trees) is not list or len(trees) != count:
            raise ValueError(f"expected a JSON array of {count} stored values")
        if not set(map(type, trees)) <= {dict}:
            raise ValueError("a stored value is not a dict of names")
        if '"$t"' not in text:
            # No tagged value anywhere (a tag is the key "$t", which no string inside JSON text
            # can spell since its quotes are escaped): every tree is its value already.
            return trees
        return [
            tree
            if all(type(v) in _SCALARS for v in tree.values())
            else {k: decode(v) for k, v in tree.items()}
            for tree in trees
        ]

    def digest(self, values: Mapping[str, Any]) -> str:
        """The digest of argument values; pickle stores fall back to pickling them."""
        try:
            return digest(values)
        except Unserialisable:
            if self.name != "pickle":
                raise
            return "p" + _pickle_digest(values)[1:]


def _first_unpicklable(value: Mapping[str, Any]) -> str:
    for v in value.values():
        try:
            pickle.dumps(v, protocol=5)
        except Exception:
            return f"{type(v).__module__}.{type(v).__qualname__}"
    return "value"


def check_serializer(value: object) -> Serializer:
    if value not in ("json", "pickle"):
        raise ConfigError(
            f"serializer must be 'json' (default) or 'pickle' (trusted data only), got {value!r}"
        )
    return Serializer(value)


def describe(exc: Unserialisable) -> str:
    """`exc` as the end of a sentence: what cannot be stored, where, and what to do."""
    return (
        f"a value of type {exc.type_name} ({exc.where}) cannot be stored as JSON"
        f"{' (' + exc.why + ')' if exc.why else ''}; use attrs classes, dataclasses, enums, "
        "datetimes and containers of them, or open the store with serializer='pickle' "
        "(trusted data only)"
    )
