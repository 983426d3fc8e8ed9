"""Hostile inputs for a Space's HTTP surface, and the drivers that send them.

Everything here works from what a running Space says about itself (``/openapi.json`` and
Gradio's ``view_api``), so a Space added later is covered without a line changed:

- :func:`read_routes` turns the OpenAPI document into :class:`Route` objects; :func:`sample_body`
  derives a plausible body for a route from its request schema.
- :func:`hostile_cases` is the corpus for a JSON route: huge bodies, deep nesting, invalid UTF-8,
  lone surrogates, NaN/Infinity, control characters, wrong types per field, wrong content types,
  empty and truncated bodies. :func:`wrong_method_cases` covers every path with the methods it
  does not take, :func:`file_cases` the multipart routes that take a file (truncated, corrupt,
  mislabelled files, decompression bombs). Each case says which answers are acceptable.
- :func:`send` sends one case and :func:`violations` says what is wrong with the answer: a 5xx,
  an answer outside the case's contract, a hang, JSON that is not strict (NaN, lone surrogates),
  an error body that is not ``{"error", "error_type"}``.
- :func:`fuzz_openapi` runs schemathesis-generated requests against every operation and
  :func:`fuzz_gradio` hypothesis-generated inputs against every named Gradio endpoint; both
  tally answers per route in :class:`RouteTally`.
- :class:`HealthWatchdog` polls ``/health`` in the background during a run; :func:`tree_rss` is
  the resident memory of a Space's process tree.

The pytest suite (``tests/test_reliability.py``) and ``python -m benchmarks.reliability.run``
both use it: the tests with a few examples per route, the benchmark with hundreds.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import gzip
import io
import json
import math
import re
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
#: The huge bodies of the corpus: both are over every Space's 2 MB body limit.
HUGE_SIZES = (5 * MB, 50 * MB)
#: Any 4xx: the input is refused as the caller's mistake.
CLIENT_ERROR = frozenset(range(400, 500))
#: Nesting of the deep-nesting cases (Python's json gives up near 1,000 by recursion).
DEPTH = 10_000
#: Length of the list sent where a string is expected.
LONG_LIST = 10_000
#: Integers and floats at the edges, for numeric fields (served or refused, never a 5xx).
INTEGER_EDGES = (("2**64", 2**64), ("10**30", 10**30), ("-10**30", -(10**30)), ("-1", -1))
FLOAT_EDGES = (("1e308", 1e308), ("-1e308", -1e308))
#: Methods checked on every path.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: A path no Space serves.
UNKNOWN_PATH = "/no/such/route/reliability"
JSON = "application/json"
#: Gradio input components that take a file: the Gradio driver does not invent those.
FILE_COMPONENTS = frozenset("File Files Image ImageEditor Audio Video Gallery Model3D".split())


class NotStrictJSON(ValueError):
    """JSON that only Python's lenient parser reads: NaN, Infinity or a lone surrogate."""


def _refuse_constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON text that no float holds
        raise NotStrictJSON(f"{text} overflows a double")
    return value


def strict_json(data: bytes | str) -> Any:
    """Parse JSON as a strict peer would: no ``NaN``/``Infinity`` (nor numbers that overflow to
    it), valid UTF-8, no lone surrogates.

    Raises:
        ValueError: The text is not strict JSON (``NotStrictJSON`` for NaN and surrogates).
    """
    value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise NotStrictJSON(f"a string holds a lone surrogate: {e}") from e
    return value


def excerpt(data: bytes | str, limit: int = 300) -> str:
    """The first ``limit`` characters of a body, with its size when it is cut."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(data):,} {'bytes' if isinstance(data, bytes) else 'chars'})"


# ---- routes ----------------------------------------------------------------------------------


def _lookup(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def inline_refs(spec: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """``node`` with every local ``$ref`` replaced by what it names (cycles cut at depth 8)."""
    if isinstance(node, list):
        return [inline_refs(spec, item, depth) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        if depth >= 8:
            return {}
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return inline_refs(spec, {**_lookup(spec, node["$ref"]), **rest}, depth + 1)
    return {key: inline_refs(spec, value, depth) for key, value in node.items()}


@dataclass(frozen=True)
class Route:
    """One operation of a Space's OpenAPI document."""

    # "POST".
    method: str
    # The path as documented: "/tiers/{tier}/generate".
    template: str
    # The path with its parameters filled: "/tiers/base/generate".
    path: str
    # Request body media type -> its JSON schema, ``$ref``s inlined (empty: no body).
    bodies: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        """``POST /tiers/{tier}/generate``."""
        return f"{self.method} {self.template}"

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The schema of an ``application/json`` body, or None when it takes none."""
        return self.bodies.get(JSON)

    def binary_fields(self) -> list[str]:
        """The file fields of a ``multipart/form-data`` body: ``format: binary`` (OpenAPI
        3.0) or a ``contentMediaType`` (3.1), alone, in a list or in an ``anyOf``."""
        schema = self.bodies.get("multipart/form-data") or {}
        return [name for name, prop in (schema.get("properties") or {}).items() if _is_file(prop)]


def _is_file(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("format") == "binary" or "contentMediaType" in schema:
        return True
    variants = [schema.get("items"), *(schema.get("anyOf") or []), *(schema.get("oneOf") or [])]
    return any(_is_file(v) for v in variants)


def read_routes(spec: dict[str, Any], path_values: dict[str, str] | None = None) -> list[Route]:
    """Every operation in an OpenAPI document.

    Args:
        spec: The document (``GET /openapi.json``).
        path_values: Values for path parameters the schema cannot enumerate (e.g. a tier name);
            others take the parameter's enum, example or default, else ``"x"``.

    Returns:
        The routes, in document order.
    """
    known = path_values or {}
    routes = []
    for template, item in (spec.get("paths") or {}).items():
        for method, op in item.items():
            if method.upper() not in (*METHODS, "HEAD", "OPTIONS"):
                continue
            params = {
                p["name"]: inline_refs(spec, p)
                for p in op.get("parameters", [])
                if p.get("in") == "path"
            }

            def fill(match: re.Match[str], params: dict[str, Any] = params) -> str:
                name = match.group(1)
                if name in known:
                    return known[name]
                schema = (params.get(name) or {}).get("schema") or {}
                for key in ("example", "default"):
                    if key in schema:
                        return str(schema[key])
                return str(schema["enum"][0]) if schema.get("enum") else "x"

            content = (op.get("requestBody") or {}).get("content") or {}
            bodies = {
                media: inline_refs(spec, body.get("schema") or {})
                for media, body in content.items()
            }
            path = re.sub(r"\{([^}]+)\}", fill, template)
            routes.append(Route(method.upper(), template, path, bodies))
    return routes


# ---- JSON schemas: types, example values, the fields of a body --------------------------------


def allowed_types(schema: dict[str, Any]) -> frozenset[str]:
    """The JSON types a schema admits (``integer`` also counted as ``number``); empty for a
    schema that admits any value."""
    if not isinstance(schema, dict):
        return frozenset()
    kinds: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        kinds.add(declared)
    elif isinstance(declared, list):
        kinds.update(declared)
    for key in ("anyOf", "oneOf"):
        for variant in schema.get(key) or []:
            inner = allowed_types(variant)
            if not inner:
                return frozenset()  # one variant takes anything
            kinds |= inner
    for variant in schema.get("allOf") or []:
        kinds |= allowed_types(variant)
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        kinds.update(_json_type(v) for v in values)
    if not kinds and "properties" in schema:
        kinds.add("object")
    if "integer" in kinds:
        kinds.add("number")
    return frozenset(kinds)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _variant(schema: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The first part of ``schema`` (itself or an anyOf/oneOf/allOf variant) of type ``kind``."""
    if not isinstance(schema, dict):
        return None
    own = schema.get("type")
    if own == kind or (isinstance(own, list) and kind in own):
        return schema
    if kind == "object" and "properties" in schema and own is None:
        return schema
    for key in ("anyOf", "oneOf", "allOf"):
        for variant in schema.get(key) or []:
            found = _variant(variant, kind)
            if found is not None:
                return found
    return None


def example_value(
    schema: dict[str, Any], text: str = "Hello", known: dict[str, Any] | None = None
) -> Any:
    """A value the schema admits, as small as it allows.

    Objects get their required properties (or, when none is required, their first property
    that takes a string or any value); strings are ``text``; numbers respect their bounds.

    Args:
        schema: A JSON schema, ``$ref``s inlined.
        text: The string to use (a Space's sample input).
        known: Property name -> the value to give it wherever it appears (e.g. a tier name).
    """
    known = known or {}
    if not isinstance(schema, dict):
        return text
    if schema.get("default") is not None:
        return copy.deepcopy(schema["default"])
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kinds = allowed_types(schema) - {"null"}
    if not kinds or "string" in kinds:
        return text
    if "object" in kinds:
        obj = _variant(schema, "object") or {}
        props = obj.get("properties") or {}
        names = list(obj.get("required") or [])
        if not names:
            names = [
                n
                for n, p in props.items()
                if not (allowed_types(p) - {"null"}) or "string" in allowed_types(p)
            ][:1]
        return {
            n: known[n] if n in known else example_value(props.get(n, {}), text, known)
            for n in names
        }
    if "array" in kinds:
        arr = _variant(schema, "array") or {}
        item = example_value(arr.get("items") or {}, text, known)
        return [item] * max(1, int(arr.get("minItems", 1)))
    if "boolean" in kinds:
        return False
    number = _variant(schema, "integer") or _variant(schema, "number") or {}
    low = number.get("minimum", number.get("exclusiveMinimum"))
    value = 1 if low is None else low + (1 if "exclusiveMinimum" in number else 0)
    high = number.get("maximum")
    value = min(value, high) if high is not None else value
    return int(value) if "integer" in kinds else float(value)


def sample_body(route: Route, text: str = "Hello", known: dict[str, Any] | None = None) -> Any:
    """A plausible JSON body for ``route``, derived from its request schema (see
    :func:`example_value`)."""
    return example_value(route.json_schema or {}, text, known)


@dataclass(frozen=True)
class Field:
    """A place in a JSON body: ``("parameters", "temperature")``, ``("messages", 0, "role")``."""

    path: tuple[str | int, ...]
    # The JSON types its schema admits; empty when it admits any value.
    types: frozenset[str]
    # Its schema (``{}`` when it came from the sample only).
    schema: dict[str, Any] = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        """``parameters.temperature``."""
        return ".".join(str(p) for p in self.path) or "body"


_MISSING = object()


def _get(body: Any, path: tuple[str | int, ...]) -> Any:
    node = body
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or len(node) <= step:
                return _MISSING
        elif not isinstance(node, dict) or step not in node:
            return _MISSING
        node = node[step]
    return node


def body_fields(schema: dict[str, Any] | None, sample: Any, depth: int = 3) -> list[Field]:
    """The fields of a body: from its schema (properties, the first item of arrays) down to
    ``depth`` levels, else from the sample's own keys."""
    found: list[Field] = []

    def walk(node: dict[str, Any], prefix: tuple[str | int, ...]) -> None:
        if prefix:
            found.append(Field(prefix, allowed_types(node), node))
        if len(prefix) >= depth:
            return
        obj = _variant(node, "object")
        for name, prop in ((obj or {}).get("properties") or {}).items():
            walk(prop, (*prefix, name))
        arr = _variant(node, "array")
        if arr is not None and isinstance(arr.get("items"), dict):
            walk(arr["items"], (*prefix, 0))

    def walk_sample(value: Any, prefix: tuple[str | int, ...]) -> None:
        if prefix:
            found.append(Field(prefix, frozenset(), {}))
        if len(prefix) >= depth:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk_sample(item, (*prefix, key))
        elif isinstance(value, list) and value:
            walk_sample(value[0], (*prefix, 0))

    if schema:
        walk(schema, ())
    else:
        walk_sample(sample, ())
    return found


def _set(node: Any, step: str | int, value: Any) -> None:
    if isinstance(step, int):
        node.extend([None] * (step + 1 - len(node)))
    node[step] = value


def put(
    body: Any, path: tuple[str | int, ...], value: Any, schema: dict[str, Any] | None = None
) -> Any:
    """A copy of ``body`` with ``value`` at ``path``.

    Containers missing on the way are made: an object from ``schema``'s example value where
    it has one (so the rest of the body stays valid), else empty.
    """
    root = copy.deepcopy(body) if isinstance(body, dict | list) else {}
    node: Any = root
    sub: dict[str, Any] = schema or {}
    for i, step in enumerate(path[:-1]):
        if isinstance(step, int):
            sub = (_variant(sub, "array") or {}).get("items") or {}
        else:
            sub = ((_variant(sub, "object") or {}).get("properties") or {}).get(step) or {}
        child = _get(node, (step,))
        wants_list = isinstance(path[i + 1], int)
        if not isinstance(child, list if wants_list else dict):
            made = example_value(sub) if _variant(sub, "object") else {}
            child = [] if wants_list else (made if isinstance(made, dict) else {})
            _set(node, step, child)
        node = child
    _set(node, path[-1], value)
    return root


@dataclass(frozen=True)
class Raw:
    """JSON text put verbatim into an encoded body (``NaN``, ``1e999``, invalid bytes)."""

    text: bytes


def encode(value: Any) -> bytes:
    """``value`` as JSON bytes, ASCII-escaped, with :class:`Raw` parts spliced in as they are.

    Python writes ``NaN``/``Infinity`` for non-finite floats and ``\\ud800`` for a lone
    surrogate, which is what the corpus wants to send.
    """
    raws: list[bytes] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            raws.append(node.text)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(node, dict):
            return {key: swap(item) for key, item in node.items()}
        if isinstance(node, list):
            return [swap(item) for item in node]
        return node

    data = json.dumps(swap(value)).encode("ascii")
    for i, raw in enumerate(raws):
        data = data.replace(f'"@@raw{i}@@"'.encode(), raw)
    return data


# ---- what the schemas cannot say -------------------------------------------------------------

#: Values for path parameters and body fields whose valid values no schema lists: llm-tiers'
#: tier names (``/tiers/{tier}``, OpenAI's ``model``). Generated and derived requests use them,
#: so they reach the route's work instead of stopping at a 404.
KNOWN_VALUES: dict[str, Any] = {"tier": "base", "model": "base"}
#: Valid bodies for routes whose schema-derived body is not a typical request (route template
#: -> body); the corpus changes these, and the derived body is sent once as a case of its own.
SAMPLE_BODIES: dict[str, Any] = {
    "/v1/chat/completions": {
        "model": "base",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
    },
}

#: Output-length fields set small in every sample body (wherever the schema has them, outside
#: lists), so that the corpus's accepted requests generate a few tokens, not a tier's hundred.
SHORT_OUTPUT: dict[str, int] = {"max_new_tokens": 8, "max_tokens": 8}


def space_text(name: str) -> str:
    """A valid text input for a Space: the first ``predict`` input of its
    ``tests/contract.json`` when that is a string, else ``"Hello"``."""
    from tests.harness import SPACES_DIR

    path = SPACES_DIR / name / "tests" / "contract.json"
    try:
        given = json.loads(path.read_text(encoding="utf-8")).get("predict") or []
    except (OSError, ValueError):
        given = []
    return given[0] if given and isinstance(given[0], str) else "Hello"


def samples(
    route: Route, text: str = "Hello", *, short: bool = True
) -> tuple[Any, list[HostileCase]]:
    """The body the corpus changes for ``route``, and the sample bodies sent as cases of
    their own (the schema-derived one when :data:`SAMPLE_BODIES` gives another; no 5xx).

    The derived body is :func:`sample_body`'s, with :data:`SHORT_OUTPUT` applied when
    ``short`` (else the Space's own defaults apply, as for a typical caller).
    """
    derived = sample_body(route, text, KNOWN_VALUES)
    for f in body_fields(route.json_schema, derived, depth=2) if short else []:
        if f.path[-1] in SHORT_OUTPUT and all(isinstance(step, str) for step in f.path):
            derived = put(derived, f.path, SHORT_OUTPUT[str(f.path[-1])], route.json_schema)
    given = SAMPLE_BODIES.get(route.template)
    if given is None:
        return derived, []
    case = HostileCase(
        "sample/derived-from-the-schema",
        route.label,
        route.method,
        route.path,
        JSON,
        encode(derived),
    )
    return given, [case]


# ---- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileCase:
    """One hostile request and the answers it may get."""

    # What it is: "nan/NaN-in-parameters.temperature".
    name: str
    # The route it targets, as documented: "POST /generate".
    route: str
    method: str
    # The request path, parameters filled.
    path: str
    # The Content-Type header; None sends none.
    content_type: str | None
    body: bytes = field(repr=False)
    # Acceptable statuses; None: any that is not a 5xx.
    expect: frozenset[int] | None = None
    # Send the body with chunked transfer encoding (no Content-Length).
    chunked: bool = False

    def describe(self) -> str:
        """The exact input, shortened for a report: method, path, content type, body."""
        head = self.body[:160].decode("utf-8", "backslashreplace")
        more = f"... ({len(self.body):,} bytes)" if len(self.body) > 160 else ""
        sent = " chunked" if self.chunked else ""
        return (
            f"{self.method} {self.path} [{self.name}] content-type={self.content_type}"
            f"{sent} body={head!r}{more}"
        )


def _expects(expect: frozenset[int] | None) -> str:
    if expect is None:
        return "no 5xx"
    if expect == CLIENT_ERROR:
        return "a 4xx"
    return " or ".join(str(s) for s in sorted(expect))


def hostile_cases(
    route: Route, sample: Any, *, sizes: Iterable[int] = HUGE_SIZES, text: str = "Hello"
) -> Iterator[HostileCase]:
    """The hostile corpus for a JSON route.

    The contract each case checks: a body over the Space's limit is 413; NaN, Infinity and
    lone surrogates are 422; malformed JSON, a wrong content type and a wrong type in a field
    are a 4xx; the rest (NUL, control characters, huge integers, empty fields) may be served or
    refused, but never with a 5xx.

    Args:
        route: A route that takes a JSON body.
        sample: A valid body for it (see :func:`sample_body`); the cases change one thing each.
        sizes: Body sizes of the huge cases, in bytes.
        text: A valid string for the route.

    Yields:
        The cases, built one at a time (the huge ones are 50 MB).
    """
    schema = route.json_schema or {}
    valid = encode(sample)
    fields = body_fields(schema, sample)
    strings = [
        f
        for f in fields
        if "string" in f.types or (not f.types and isinstance(_get(sample, f.path), str))
    ]
    first = strings[0] if strings else Field(("padding",), frozenset({"string"}), {})

    def case(
        name: str,
        body: bytes,
        expect: frozenset[int] | None,
        *,
        content_type: str | None = JSON,
        chunked: bool = False,
    ) -> HostileCase:
        return HostileCase(
            name, route.label, route.method, route.path, content_type, body, expect, chunked
        )

    def at(f: Field, value: Any) -> bytes:
        return encode(put(sample, f.path, value, schema))

    too_large = frozenset({413})
    for size in sizes:
        mb = f"{size // MB}MB"
        huge = at(first, "x" * size)
        yield case(f"size/{mb}-string-in-{first.name}", huge, too_large)
        yield case(f"size/{mb}-string-in-{first.name}-chunked", huge, too_large, chunked=True)
        del huge
        yield case(f"size/{mb}-raw", b"x" * size, too_large)

    deep_lists = b"[" * DEPTH + b"]" * DEPTH
    yield case(f"nesting/{DEPTH}-lists", deep_lists, CLIENT_ERROR)
    yield case(f"nesting/{DEPTH}-objects", b'{"a":' * DEPTH + b"0" + b"}" * DEPTH, CLIENT_ERROR)
    yield case(f"nesting/{DEPTH}-lists-in-{first.name}", at(first, Raw(deep_lists)), CLIENT_ERROR)

    for label, raw in (
        ("invalid-byte", b"\xff\xfe"),
        ("overlong", b"\xc0\xaf"),
        ("cut-sequence", b"ok\xe2\x82"),
        ("latin-1", "café".encode("latin-1")),
    ):
        yield case(f"utf8/{label}-in-{first.name}", at(first, Raw(b'"' + raw + b'"')), CLIENT_ERROR)
    # A surrogate encoded as UTF-8 bytes: Python's json decodes it to a lone surrogate.
    yield case(
        f"utf8/encoded-surrogate-in-{first.name}",
        at(first, Raw(b'"\xed\xa0\x80"')),
        frozenset({422}),
    )

    invalid = frozenset({422})
    lone = (
        ("high", "\ud800"),
        ("low", "\udc00"),
        ("reversed", "\udc00\ud800"),
        ("high-at-end", "ok\ud83d"),
    )
    for i, f in enumerate(strings or [first]):
        for label, value in lone if i == 0 else lone[:1]:  # every kind in the first string
            yield case(f"surrogate/{label}-in-{f.name}", at(f, value), invalid)
    if isinstance(sample, dict):
        yield case("surrogate/in-a-key", encode({**sample, "\ud800": text}), invalid)

    numbers = [f for f in fields if "number" in f.types]
    for f in numbers:
        for token in ("NaN", "Infinity", "-Infinity"):
            yield case(f"nan/{token}-in-{f.name}", at(f, Raw(token.encode())), invalid)
        for token in ("1e999", "-1e999"):  # Python reads these as infinities
            yield case(f"nan/{token}-in-{f.name}", at(f, Raw(token.encode())), CLIENT_ERROR)
        huge = INTEGER_EDGES if "integer" in f.types else FLOAT_EDGES
        for label, value in huge:
            yield case(f"number/{label}-in-{f.name}", at(f, value), None)
    for token in ("NaN", "Infinity", "-Infinity"):
        yield case(f"nan/{token}-as-the-body", token.encode(), invalid)
    yield case(f"nan/NaN-in-{first.name}", at(first, Raw(b"NaN")), invalid)
    yield case(f"nan/NaN-in-a-list-in-{first.name}", at(first, Raw(b"[1, NaN]")), invalid)

    for f in strings or [first]:
        yield case(f"control/NUL-in-{f.name}", at(f, "\x00"), None)
        yield case(
            f"control/C0-and-DEL-in-{f.name}",
            at(f, "".join(map(chr, range(32))) + "\x7fa\x00b"),
            None,
        )
        only_strings = "string" in f.types and "array" not in f.types
        value = _get(sample, f.path)
        yield case(
            f"list/{LONG_LIST}-items-in-{f.name}",
            at(f, [value if isinstance(value, str) else text] * LONG_LIST),
            CLIENT_ERROR if only_strings else None,
        )
    yield case(
        f"unicode/specials-in-{first.name}",
        at(first, "\u202e\ufeff\uffff\U0010ffff\u200d👩‍👩‍👧" + text),
        None,
    )
    yield case(f"control/raw-in-{first.name}", at(first, Raw(b'"a\x01b\nc\x00"')), CLIENT_ERROR)
    yield case("control/NUL-after-the-body", valid + b"\x00", CLIENT_ERROR)

    yield case("content-type/text-plain", valid, None, content_type="text/plain")
    yield case("content-type/none", valid, None, content_type=None)
    yield case("content-type/octet-stream", valid, None, content_type="application/octet-stream")
    form = "&".join(
        f"{k}={v}"
        for k, v in (sample.items() if isinstance(sample, dict) else [])
        if isinstance(v, str)
    )
    yield case(
        "content-type/form-urlencoded",
        form.encode(),
        CLIENT_ERROR,
        content_type="application/x-www-form-urlencoded",
    )
    mtype, mbody = multipart_body({"json": (None, JSON, valid)})
    yield case("content-type/multipart", mbody, CLIENT_ERROR, content_type=mtype)

    needs = CLIENT_ERROR if schema.get("required") else None
    for name, body, expect in (
        ("empty/body", b"", CLIENT_ERROR),
        ("empty/whitespace", b" \r\n\t", CLIENT_ERROR),
        ("empty/null", b"null", CLIENT_ERROR),
        ("empty/list", b"[]", CLIENT_ERROR),
        ("empty/string", b'""', CLIENT_ERROR),
        ("empty/number", b"0", CLIENT_ERROR),
        ("empty/object", b"{}", needs),
    ):
        yield case(name, body, expect)
    for cut in sorted({1, len(valid) // 2, len(valid) - 1}):
        if 0 < cut < len(valid):
            yield case(f"truncated/{cut}-of-{len(valid)}-bytes", valid[:cut], CLIENT_ERROR)
    yield case("json/trailing-garbage", valid + b"}", CLIENT_ERROR)
    yield case("json/two-documents", valid + b"\n" + valid, CLIENT_ERROR)
    yield case("json/single-quotes", valid.replace(b'"', b"'"), CLIENT_ERROR)
    yield case("json/byte-order-mark", b"\xef\xbb\xbf" + valid, None)

    wrong_values: tuple[tuple[str, Any], ...] = (
        ("string", "not-a-valid-value"),
        ("number", 7.5),
        ("boolean", True),
        ("array", []),
        ("object", {}),
        ("null", None),
    )
    for f in fields:
        if not f.types:
            continue  # takes any value: the Space's own checks answer (covered above)
        for kind, value in wrong_values:
            if kind in f.types or (kind == "boolean" and "number" in f.types):
                continue  # JSON schema allows it, or pydantic's lax mode reads it as 0/1
            yield case(f"type/{kind}-in-{f.name}", at(f, value), CLIENT_ERROR)
        if f.schema.get("enum") and "string" in f.types:
            yield case(f"type/not-a-choice-in-{f.name}", at(f, "not-a-choice"), CLIENT_ERROR)
        if "string" in f.types:
            yield case(f"empty/string-in-{f.name}", at(f, ""), None)
        if "array" in f.types:
            yield case(f"empty/list-in-{f.name}", at(f, []), None)
            items = (_variant(f.schema, "array") or {}).get("items") or {}
            item = example_value(items, text)
            yield case(f"list/{LONG_LIST}-items-in-{f.name}", at(f, [item] * LONG_LIST), None)
        if "object" in f.types:
            yield case(f"empty/object-in-{f.name}", at(f, {}), None)


def wrong_method_cases(routes: list[Route]) -> Iterator[HostileCase]:
    """Every path with each method it does not take (405 with ``Allow`` and the error body),
    and an unknown path with every method (404).

    ``GET /`` is left out: Gradio serves its page there.
    """
    by_path: dict[str, list[Route]] = {}
    for route in routes:
        by_path.setdefault(route.path, []).append(route)
    for path, on_path in by_path.items():
        taken = {r.method for r in on_path} | (
            {"HEAD"} if any(r.method == "GET" for r in on_path) else set()
        )
        for method in METHODS:
            if method in taken or (method == "GET" and path == "/"):
                continue
            body = b"{}" if method in BODY_METHODS else b""
            yield HostileCase(
                f"method/{method}",
                f"{method} {on_path[0].template}",
                method,
                path,
                JSON if body else None,
                body,
                frozenset({405}),
            )
    for method in METHODS:
        body = b"{}" if method in BODY_METHODS else b""
        yield HostileCase(
            f"unknown-path/{method}",
            f"{method} {UNKNOWN_PATH}",
            method,
            UNKNOWN_PATH,
            JSON if body else None,
            body,
            frozenset({404}),
        )


# ---- files (multipart routes) ----------------------------------------------------------------


def multipart_body(parts: dict[str, tuple[str | None, str, bytes]]) -> tuple[str, bytes]:
    """A ``multipart/form-data`` body.

    Args:
        parts: Field name -> (file name or None, content type, bytes).

    Returns:
        The Content-Type header (with its boundary) and the body.
    """
    boundary = "reliability-7d4f0c2b9e"
    out = io.BytesIO()
    for name, (filename, ctype, data) in parts.items():
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", out.getvalue()


def _png(width: int, height: int, pixels: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def _wav(rate: int, samples: bytes, claimed: int | None = None) -> bytes:
    """16-bit mono PCM WAV; ``claimed`` overrides the data size its header states."""
    size = len(samples) if claimed is None else claimed
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        (36 + size) & 0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        rate,
        rate * 2,
        2,
        16,
        b"data",
        size,
    )
    return header + samples


PDF = (
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n"
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n3 0 obj\n<< /Type /Page /Parent "
    b"2 0 R /MediaBox [0 0 612 792] >>\nendobj\nxref\n0 4\n0000000000 65535 f \n"
    b"trailer\n<< /Size 4 /Root 1 0 R >>\nstartxref\n0\n%%EOF\n"
)


def hostile_files() -> Iterator[tuple[str, str, str, bytes, frozenset[int] | None]]:
    """Small hostile files: (case name, file name, content type, bytes, acceptable statuses).

    A PNG whose header claims 60000x60000 pixels (a decompression bomb in 1 KB), a WAV whose
    header claims 4 GB, a WAV at 0 Hz, truncated PNG, PDF and WAV files, corrupt bytes, files
    whose name and type lie, an empty file, and zip and gzip files that inflate ~1,000x
    (100 MB from ~100 KB).
    """
    small = _png(4, 4, (b"\x00" + b"\x80\x40\x20" * 4) * 4)
    yield (
        "png-claims-60000x60000",
        "bomb.png",
        "image/png",
        _png(60000, 60000, b"\x00" * 4096),
        CLIENT_ERROR,
    )
    yield "png-truncated", "cut.png", "image/png", small[: len(small) // 2], CLIENT_ERROR
    yield (
        "png-corrupt",
        "corrupt.png",
        "image/png",
        b"\x89PNG\r\n\x1a\n" + b"\xde\xad" * 64,
        CLIENT_ERROR,
    )
    yield "pdf-truncated", "cut.pdf", "application/pdf", PDF[: len(PDF) // 2], CLIENT_ERROR
    tone = _wav(16000, bytes(2 * 1600))  # 0.1 s of 16 kHz silence
    yield "wav-claims-4GB", "huge.wav", "audio/wav", _wav(16000, bytes(3200), 0xFFFFFFF0), None
    yield "wav-at-0Hz", "zero.wav", "audio/wav", _wav(0, bytes(3200)), CLIENT_ERROR
    yield "wav-truncated", "cut.wav", "audio/wav", tone[:30], CLIENT_ERROR
    yield "wav-named-png", "tone.png", "image/png", tone, None
    # A Space that reads a file by its bytes may take it (a document Space reads the image).
    yield "png-named-wav", "voice.wav", "audio/wav", small, None
    yield "pdf-named-png", "photo.png", "image/png", PDF, None
    yield "png-named-pdf", "doc.pdf", "application/pdf", small, None
    yield "empty-file", "empty.png", "image/png", b"", CLIENT_ERROR
    zeros = b"\x00" * MB
    packed = io.BytesIO()
    with (
        zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("zeros.bin", "w", force_zip64=True) as member,
    ):
        for _ in range(100):
            member.write(zeros)
    yield "zip-bomb-100MB", "archive.zip", "application/zip", packed.getvalue(), None
    squeezed = io.BytesIO()
    with gzip.GzipFile(fileobj=squeezed, mode="wb") as gz:
        for _ in range(100):
            gz.write(zeros)
    yield "gzip-bomb-100MB", "data.gz", "application/gzip", squeezed.getvalue(), None


def file_cases(
    route: Route, field_name: str, sample: dict[str, str] | None = None
) -> Iterator[HostileCase]:
    """The hostile files, each sent in ``field_name`` of a multipart body (the hook for Spaces
    that take uploads; used only for routes with a binary multipart field).

    Args:
        route: A route whose body is ``multipart/form-data``.
        field_name: Its file field.
        sample: Other form fields to send along (name -> value).
    """
    others = {k: (None, "text/plain", v.encode()) for k, v in (sample or {}).items()}
    for name, filename, ctype, data, expect in hostile_files():
        mtype, body = multipart_body({**others, field_name: (filename, ctype, data)})
        yield HostileCase(
            f"file/{name}-in-{field_name}",
            route.label,
            route.method,
            route.path,
            mtype,
            body,
            expect,
        )


def route_cases(
    route: Route, sample: Any, *, sizes: Iterable[int] = HUGE_SIZES, text: str = "Hello"
) -> Iterator[HostileCase]:
    """Every hostile case for one route: the JSON corpus when it takes JSON, the file cases
    for each binary field of a multipart body."""
    if route.json_schema is not None:
        yield from hostile_cases(route, sample, sizes=sizes, text=text)
    files = route.binary_fields()
    form = route.bodies.get("multipart/form-data") or {}
    others = {  # the form's other required fields, so that the file is what gets judged
        name: str(example_value(prop, text))
        for name, prop in (form.get("properties") or {}).items()
        if name in (form.get("required") or []) and name not in files
    }
    for name in files:
        yield from file_cases(route, name, others)


# ---- sending and judging ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What a request got."""

    # The HTTP status, None when no answer came.
    status: int | None
    elapsed_s: float
    content_type: str = ""
    # The first characters of the body (or the transport error).
    excerpt: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # "hang: ..." or "transport error: ..." when no (whole) answer came.
    error: str | None = None
    # What is wrong with the body: not strict JSON, not the error shape.
    problems: list[str] = field(default_factory=list)


def body_problems(status: int, content_type: str, body: bytes) -> list[str]:
    """What is wrong with a (non-streamed) answer body: JSON that is not strict, an error
    body that is not ``{"error": str, "error_type": str}``."""
    problems = []
    is_json = content_type.split(";")[0].strip().endswith(("/json", "+json"))
    value: Any = None
    if is_json:
        try:
            value = strict_json(body)
        except ValueError as e:
            problems.append(f"not strict JSON ({e})")
            return problems
    if status >= 400:
        shaped = (
            isinstance(value, dict)
            and isinstance(value.get("error"), str)
            and isinstance(value.get("error_type"), str)
        )
        if not shaped:
            problems.append('error body is not {"error": str, "error_type": str}')
    return problems


def event_problems(lines: Iterable[str]) -> list[str]:
    """Each ``data:`` line of a server-sent event stream must be strict JSON (or ``[DONE]``)."""
    problems = []
    for i, line in enumerate(lines):
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            continue
        try:
            strict_json(payload)
        except ValueError as e:
            problems.append(f"event {i} is not strict JSON ({e}): {excerpt(payload, 120)}")
            if len(problems) >= 3:
                break
    return problems


def _chunks(body: bytes, pace_s: float, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        if pace_s:
            time.sleep(pace_s)
        yield body[i : i + size]


def send(
    http: httpx.Client,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str | None = None,
    chunked: bool = False,
    pace_s: float = 0.0,
    timeout: float = 30.0,
) -> Outcome:
    """Send one request and read the whole answer (a server-sent event stream to its end).

    Args:
        http: A client with the Space's base URL.
        method: HTTP method.
        path: Request path.
        body: Request body.
        content_type: The Content-Type header; None sends none.
        chunked: Send the body in 64 KB chunks without a Content-Length.
        pace_s: Seconds to wait before each chunk (a slow upload), when chunked.
        timeout: Seconds for the whole answer; past it the request counts as a hang.

    Returns:
        The outcome; transport errors and hangs are recorded in it, not raised.
    """
    headers = {"content-type": content_type} if content_type else {}
    if method in BODY_METHODS and not body and not chunked:
        headers["content-length"] = "0"
    content: bytes | Iterator[bytes] = body
    if chunked:
        content = _chunks(body, pace_s)
    start = time.perf_counter()
    deadline = start + timeout
    try:
        with http.stream(method, path, content=content, headers=headers, timeout=timeout) as r:
            ctype = r.headers.get("content-type", "")
            outcome = Outcome(r.status_code, 0.0, ctype, headers=dict(r.headers))
            if ctype.startswith("text/event-stream"):
                lines = []
                for line in r.iter_lines():
                    lines.append(line)
                    if time.perf_counter() > deadline:
                        outcome.error = f"hang: the event stream ran past {timeout:g} s"
                        break
                outcome.excerpt = excerpt("\n".join(lines))
                outcome.problems = event_problems(lines)
            else:
                data = r.read()
                outcome.excerpt = excerpt(data)
                outcome.problems = body_problems(r.status_code, ctype, data)
    except httpx.TimeoutException as e:
        outcome = Outcome(None, 0.0, error=f"hang: no answer in {timeout:g} s ({type(e).__name__})")
    except httpx.TransportError as e:
        outcome = Outcome(None, 0.0, error=f"transport error: {type(e).__name__}: {e}")
    outcome.elapsed_s = time.perf_counter() - start
    return outcome


def send_case(http: httpx.Client, case: HostileCase, timeout: float = 30.0) -> Outcome:
    """:func:`send` for a :class:`HostileCase`."""
    return send(
        http,
        case.method,
        case.path,
        case.body,
        content_type=case.content_type,
        chunked=case.chunked,
        timeout=timeout,
    )


def violations(case: HostileCase, outcome: Outcome) -> list[str]:
    """What breaks the contract in ``outcome``; empty when it is fine."""
    found = []
    if outcome.error:
        found.append(outcome.error)
    status = outcome.status
    if status is not None:
        if status >= 500:
            found.append(f"{status}, a server error")
        elif case.expect is not None and status not in case.expect:
            found.append(f"{status}, expected {_expects(case.expect)}")
        if status == 405 and "allow" not in outcome.headers:
            found.append("405 without an Allow header")
    found.extend(outcome.problems)
    return found


def report_line(case: HostileCase, outcome: Outcome, problems: list[str]) -> str:
    """One failure, naming the route, the case, the answer and the exact input."""
    status = outcome.status if outcome.status is not None else "no answer"
    return (
        f"{case.route} [{case.name}]: {'; '.join(problems)} | got {status}: "
        f"{excerpt(outcome.excerpt, 200)!r} | input: {case.describe()}"
    )


# ---- tallies ---------------------------------------------------------------------------------


@dataclass
class Finding:
    """One request that broke the contract, with what reproduces it."""

    route: str
    # The exact input: a curl command, or method, path, content type and body.
    case: str
    # What was wrong: "500, a server error", "hang: ...".
    problem: str
    # The answer's first characters.
    answer: str


@dataclass
class RouteTally:
    """Answers to one route (or one Gradio endpoint) over a run."""

    route: str
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    hangs: int = 0
    # Requests that got no answer (connection refused, reset, ...).
    transport_errors: int = 0
    # The Space's process died during this route.
    crashes: int = 0
    # Wall time spent on the route (s).
    seconds: float = 0.0
    # Slowest /health poll while this route ran (s), when a watchdog was running.
    health_max_s: float | None = None
    # Requests that broke the contract (the first ``keep`` of them).
    findings: list[Finding] = field(default_factory=list)
    # Contract breaches in all, kept or not.
    failures: int = 0
    keep: int = 20
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        status: int | None,
        problems: list[str],
        case: str = "",
        answer: str = "",
        *,
        hang: bool = False,
    ) -> None:
        """Count one request; ``problems`` non-empty makes it a finding."""
        self.requests += 1
        if status is not None:
            self.statuses[status] += 1
        elif hang:
            self.hangs += 1
        else:
            self.transport_errors += 1
        if problems:
            self.failures += 1
            if len(self.findings) < self.keep:
                self.findings.append(Finding(self.route, case, "; ".join(problems), answer))

    def fail(self, problem: str, case: str = "", answer: str = "") -> None:
        """Record a breach that is not one request's answer (the Space died, say)."""
        self.failures += 1
        self.findings.append(Finding(self.route, case, problem, answer))

    def by_class(self) -> tuple[int, int, int]:
        """Counts of 2xx, 4xx and 5xx answers."""
        counts = [0, 0, 0]
        for status, n in self.statuses.items():
            if 200 <= status < 300:
                counts[0] += n
            elif 400 <= status < 500:
                counts[1] += n
            elif status >= 500:
                counts[2] += n
        return counts[0], counts[1], counts[2]


def run_cases(
    http: httpx.Client,
    cases: Iterable[HostileCase],
    tally: RouteTally,
    *,
    timeout: float = 30.0,
    alive: Callable[[], bool] | None = None,
    tick: Callable[[], None] | None = None,
) -> list[str]:
    """Send each case, count it in ``tally`` and return the report lines of the failures.

    Stops early (one crash counted) when ``alive`` says the Space's process died.
    """
    failures = []
    start = time.perf_counter()
    for case in cases:
        outcome = send_case(http, case, timeout)
        problems = violations(case, outcome)
        hang = bool(outcome.error and outcome.error.startswith("hang"))
        tally.add(outcome.status, problems, case.describe(), outcome.excerpt, hang=hang)
        if problems:
            failures.append(report_line(case, outcome, problems))
        if tick is not None:
            tick()
        if alive is not None and not alive():
            tally.crashes += 1
            failures.append(
                f"{case.route} [{case.name}]: the Space's process died | input: {case.describe()}"
            )
            break
    tally.seconds += time.perf_counter() - start
    return failures


# ---- schemathesis ----------------------------------------------------------------------------


class _SpaceDied(Exception):
    pass


def _hypothesis_settings(examples: int, seed: int | None) -> Any:
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    return settings(
        max_examples=max(1, examples),
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),  # no shrinking: failures are recorded, not raised
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )


def _run_given(
    strategy: Any,
    examples: int,
    seed: int | None,
    body: Callable[[Any], None],
    tally: RouteTally,
    what: str,
) -> None:
    """Run ``body`` on up to ``examples`` values of ``strategy`` (fixed examples unless a
    seed is given)."""
    import hypothesis
    from hypothesis.errors import Unsatisfiable

    def each(value: Any) -> None:  # @given takes no function with default arguments
        body(value)

    test = hypothesis.given(strategy)(each)
    test = _hypothesis_settings(examples, seed)(test)
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    try:
        test()
    except Unsatisfiable:
        tally.notes.append(f"no {what} cases can be generated")


def _with_known(strategy: Any, known: dict[str, Any]) -> Any:
    """Half of the generated cases get the known values for path parameters and top-level body
    fields of those names (so a route behind ``/tiers/{tier}`` is reached, not just 404)."""
    from hypothesis import strategies as st

    def apply(pair: tuple[Any, bool]) -> Any:
        case, use = pair
        if use:
            for name in list(case.path_parameters or {}):
                if name in known:
                    case.path_parameters[name] = known[name]
            if isinstance(case.body, dict):
                for name in list(case.body):
                    if name in known:
                        case.body[name] = known[name]
        return case

    return st.tuples(strategy, st.booleans()).map(apply)


def _case_input(case: Any) -> str:
    """A generated case as its exact input: method, path, query, headers it set, body."""
    parts = [f"{case.method.upper()} {case.formatted_path}"]
    for label in ("query", "headers", "cookies"):
        value = getattr(case, label, None)
        if value:
            parts.append(f"{label}={value!r}")
    body = getattr(case, "body", None)
    if body is not None and type(body).__name__ != "NotSet":
        try:
            shown = json.dumps(body)
        except (TypeError, ValueError):
            shown = repr(body)
        parts.append(f"content-type={case.media_type} body={shown}")
    return excerpt(" ".join(parts), 1200)


def fuzz_openapi(
    base_url: str,
    *,
    examples: int = 10,
    timeout: float = 30.0,
    known: dict[str, Any] | None = None,
    seed: int | None = None,
    alive: Callable[[], bool] | None = None,
    on_route: Callable[[str], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> list[RouteTally]:
    """Send schemathesis-generated requests to every operation of a Space.

    Half of each operation's examples fit its schema (positive), half do not (negative). Each
    answer is judged as the corpus's are: no 5xx, no hang, strict JSON (each event of a
    stream too), the error body on errors.

    Args:
        base_url: The Space's URL.
        examples: Generated requests per operation (fewer where the schema admits fewer).
        timeout: Seconds per request; past it the request is a hang.
        known: Values for path parameters / body fields the schema cannot enumerate.
        seed: Hypothesis seed; None for the same examples on every run.
        alive: Says whether the Space's process still runs; a death stops the run.
        on_route: Called with each operation's label before it runs.
        tick: Called after each request (progress).

    Returns:
        One tally per operation.
    """
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=timeout)
    session = requests.Session()
    tallies = []
    try:
        for result in schema.get_all_operations():
            try:
                operation = result.ok()
            except Exception as e:
                tally = RouteTally(f"(schema) {type(e).__name__}")
                tally.fail(f"schemathesis cannot read the operation: {e}")
                tallies.append(tally)
                continue
            tally = RouteTally(operation.label)
            tallies.append(tally)
            if on_route is not None:
                on_route(operation.label)

            def call(case: Any, tally: RouteTally = tally) -> None:
                _call_case(case, base_url, session, timeout, tally)
                if tick is not None:
                    tick()
                if alive is not None and not alive():
                    tally.crashes += 1
                    raise _SpaceDied(_case_input(case))

            start = time.perf_counter()
            positive = examples - examples // 2
            for mode, n in (
                (GenerationMode.POSITIVE, positive),
                (GenerationMode.NEGATIVE, examples // 2),
            ):
                if n <= 0:
                    continue
                strategy = operation.as_strategy(generation_mode=mode)
                if known and mode == GenerationMode.POSITIVE:
                    strategy = _with_known(strategy, known)
                try:
                    _run_given(strategy, n, seed, call, tally, str(mode))
                except _SpaceDied as died:
                    tally.fail("the Space's process died", str(died))
                    return tallies
                except Exception as e:  # a generation error is the run's, not the Space's
                    tally.notes.append(f"{mode} generation stopped: {type(e).__name__}: {e}")
                finally:
                    tally.seconds = time.perf_counter() - start
    finally:
        session.close()
    return tallies


def _call_case(case: Any, base_url: str, session: Any, timeout: float, tally: RouteTally) -> None:
    import requests

    start = time.perf_counter()
    try:
        response = case.call(base_url=base_url, session=session, timeout=timeout)
    except (requests.Timeout, TimeoutError) as e:
        tally.add(
            None,
            [f"hang: no answer in {timeout:g} s ({type(e).__name__})"],
            _case_input(case),
            hang=True,
        )
        return
    except Exception as e:
        tally.add(
            None,
            [f"transport error: {type(e).__name__}: {excerpt(str(e), 200)}"],
            _case_input(case),
        )
        return
    elapsed = time.perf_counter() - start
    ctype = (response.headers.get("content-type") or [""])[0]
    problems = []
    if response.status_code >= 500:
        problems.append(f"{response.status_code}, a server error")
    if ctype.startswith("text/event-stream"):
        text = response.content.decode("utf-8", "replace")
        problems += event_problems(text.splitlines())
        if response.stream_cut_short and elapsed >= timeout:
            problems.append(f"hang: the event stream ran past {timeout:g} s")
    else:
        problems += body_problems(response.status_code, ctype, response.content)
    tally.add(response.status_code, problems, _case_input(case), excerpt(response.content, 300))


# ---- Gradio ----------------------------------------------------------------------------------


def _split_union(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def _text_strategy() -> Any:
    from hypothesis import strategies as st

    long_text = st.builds(
        lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(500, 5000)
    )
    return st.one_of(st.text(), st.just(""), long_text, st.text(st.characters(codec="utf-8")))


def gradio_type_strategy(python_type: str) -> Any | None:
    """A hypothesis strategy for a Gradio parameter's ``python_type`` (``"str"``, ``"float"``,
    ``"list[str]"``, ``"Literal['a', 'b']"``, unions of those), or None when it is not a type
    the driver invents (files)."""
    from hypothesis import strategies as st

    text = _text_strategy()
    ints = st.one_of(st.integers(-5, 5000), st.sampled_from([-1, 2**31, 2**63, 10**30, -(10**30)]))
    # No NaN or Infinity: gradio_client's JSON encoder refuses them before anything is sent
    # (the REST corpus sends them).
    floats = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([-1.0, 0.0, 1e308, -1e308, 5e-324]),
    )
    scalars = st.one_of(st.none(), st.booleans(), ints, floats, text)
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=8,
    )
    parts = []
    for part in _split_union(python_type):
        if part.startswith("Literal[") and part.endswith("]"):
            try:
                choices = list(ast.literal_eval(f"[{part[8:-1]}]"))
            except (ValueError, SyntaxError):
                choices = []
            parts.append(st.one_of(st.sampled_from(choices), text) if choices else text)
        elif part == "str":
            parts.append(text)
        elif part == "int":
            parts.append(ints)
        elif part == "float":
            parts.append(st.one_of(floats, ints))
        elif part == "bool":
            parts.append(st.booleans())
        elif part == "None":
            parts.append(st.none())
        elif part.startswith("list[") and part.endswith("]"):
            inner = gradio_type_strategy(part[5:-1])
            if inner is not None:
                parts.append(
                    st.one_of(
                        st.lists(inner, max_size=6), st.lists(inner, min_size=100, max_size=300)
                    )
                )
        elif part in ("list", "dict", "Any") or part.startswith("dict("):
            parts.append(values)
    return st.one_of(parts) if parts else None


def gradio_inputs(
    parameters: list[dict[str, Any]],
    fixed: dict[str, Any] | None = None,
    files: list[Any] | None = None,
) -> Any | None:
    """A strategy for a Gradio endpoint's positional inputs, or None when one that has no
    default cannot be invented and ``fixed`` does not give it.

    Inputs with a default get it half of the time, so a fuzzed input is often alone. A file
    input gets one of ``files`` (the hostile files, uploaded), or its ``fixed`` value.

    Args:
        parameters: The endpoint's ``view_api`` parameters.
        fixed: Input name -> a value to send (half of the time, for a file input).
        files: Values for file inputs (``gradio_client.handle_file`` of hostile files).
    """
    from hypothesis import strategies as st

    fixed = fixed or {}
    parts = []
    for param in parameters:
        name = param.get("parameter_name") or param.get("label") or ""
        has_default = param.get("parameter_has_default")
        kind = (param.get("python_type") or {}).get("type", "")
        is_file = param.get("component") in FILE_COMPONENTS or "filepath" in kind
        fuzz = st.sampled_from(files) if is_file and files else None
        if not is_file:
            fuzz = gradio_type_strategy(kind)
        if name in fixed:
            given = st.just(fixed[name])
            parts.append(st.one_of(given, fuzz) if is_file and fuzz is not None else given)
        elif fuzz is None:
            if not has_default:
                return None
            parts.append(st.just(param.get("parameter_default")))
        elif has_default:
            parts.append(st.one_of(st.just(param.get("parameter_default")), fuzz))
        else:
            parts.append(fuzz)
    return st.tuples(*parts)


def contract_files(name: str, api: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The valid files of ``/predict``'s file inputs, from the Space's ``tests/contract.json``
    (``fixed`` for :func:`fuzz_gradio`): ``{"/predict": {"audio": handle_file(...)}}``."""
    from tests.test_contract import required_inputs

    info = (api.get("named_endpoints") or {}).get("/predict")
    if info is None:
        return {}
    params = [p for p in info.get("parameters") or [] if not p.get("parameter_has_default")]
    values = required_inputs(name, api)
    files = {
        p["parameter_name"]: value
        for p, value in zip(params, values, strict=True)
        if p.get("component") in FILE_COMPONENTS
        or "filepath" in (p.get("python_type") or {}).get("type", "")
    }
    return {"/predict": files} if files else {}


def gradio_outcome(error: BaseException | None) -> tuple[int | None, list[str], bool]:
    """Classify a Gradio call: (status-like code, problems, hang).

    200 served; 422 a ``gr.Error`` (a user error: fine); 500 an internal error (the Space's
    generic message for an unexpected exception); an HTTP refusal keeps its status; None with
    a problem for a hang or a transport failure.
    """
    from concurrent.futures import TimeoutError as FutureTimeout

    from gradio_client.exceptions import AppError

    if error is None:
        return 200, [], False
    if isinstance(error, AppError):
        message = str(error.message or "")
        internal = (
            message.startswith("internal error")
            or "has not enabled verbose error reporting" in message
        )
        return (
            (500, [f"internal error: {excerpt(message, 200)}"], False)
            if internal
            else (422, [], False)
        )
    if isinstance(error, FutureTimeout | TimeoutError | httpx.TimeoutException):
        return None, [f"hang: no result in time ({type(error).__name__})"], True
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status, ([f"{status}, a server error"] if status >= 500 else []), False
    return None, [f"{type(error).__name__}: {excerpt(str(error), 200)}"], False


def fuzz_gradio(
    client: Any,
    *,
    examples: int = 10,
    timeout: float = 30.0,
    fixed: dict[str, dict[str, Any]] | None = None,
    seed: int | None = None,
    alive: Callable[[], bool] | None = None,
    on_route: Callable[[str], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> list[RouteTally]:
    """Call every named Gradio endpoint with hypothesis-generated inputs through gradio_client.

    Text inputs come from ``st.text()`` (any Unicode but surrogates, empty, long), numbers
    include out-of-range ones, choices include ones not offered, file inputs get the hostile
    files of :func:`hostile_files` (and their ``fixed`` value). A ``gr.Error`` is a fine
    answer; an internal error, a hang or the Space dying is not.

    Args:
        client: A ``gradio_client.Client`` of the Space.
        examples: Calls per endpoint.
        timeout: Seconds per call; past it the call is a hang.
        fixed: Endpoint -> input name -> a value to send: always for a value input, half of
            the time for a file input (see :func:`contract_files`).
        seed: Hypothesis seed; None for the same inputs on every run.
        alive: Says whether the Space's process still runs.
        on_route: Called with each endpoint's label before it runs.
        tick: Called after each call (progress).

    Returns:
        One tally per endpoint ("gradio /predict").
    """
    import tempfile

    from gradio_client import handle_file

    api = client.view_api(print_info=False, return_format="dict")
    tallies: list[RouteTally] = []
    with tempfile.TemporaryDirectory(prefix="hostile-files-") as folder:
        files = []
        for name, filename, _, data, _ in hostile_files():
            path = Path(folder) / f"{name}-{filename}"
            path.write_bytes(data)
            files.append(handle_file(str(path)))
        for endpoint, info in (api.get("named_endpoints") or {}).items():
            params = info.get("parameters") or []
            strategy = gradio_inputs(params, (fixed or {}).get(endpoint), files)
            tally = RouteTally(f"gradio {endpoint}")
            tallies.append(tally)
            if not _fuzz_endpoint(
                client, endpoint, strategy, tally, examples, timeout, seed, alive, on_route, tick
            ):
                break
    return tallies


def _fuzz_endpoint(
    client: Any,
    endpoint: str,
    strategy: Any,
    tally: RouteTally,
    examples: int,
    timeout: float,
    seed: int | None,
    alive: Callable[[], bool] | None,
    on_route: Callable[[str], None] | None,
    tick: Callable[[], None] | None,
) -> bool:
    """:func:`fuzz_gradio`'s calls on one endpoint; False when the Space died."""
    if strategy is None:
        tally.notes.append("an input without a default cannot be invented")
        return True
    if on_route is not None:
        on_route(tally.route)

    def call(args: tuple[Any, ...]) -> None:
        job = client.submit(*args, api_name=endpoint)
        error: Exception | None = None
        try:
            job.result(timeout=timeout)
        except Exception as e:  # every failure is the Space's answer to classify
            error = e
            if not job.done():
                job.cancel()
        status, problems, hang = gradio_outcome(error)
        shown = excerpt(repr(args), 600)
        answer = "" if error is None else excerpt(str(error), 300)
        tally.add(
            status, problems, f"client.predict(*{shown}, api_name={endpoint!r})", answer, hang=hang
        )
        if tick is not None:
            tick()
        if alive is not None and not alive():
            tally.crashes += 1
            raise _SpaceDied(shown)

    start = time.perf_counter()
    try:
        _run_given(strategy, examples, seed, call, tally, "gradio")
    except _SpaceDied as died:
        tally.fail("the Space's process died", str(died))
        return False
    finally:
        tally.seconds = time.perf_counter() - start
    return True


# ---- health and memory -----------------------------------------------------------------------


class HealthWatchdog:
    """Poll ``GET /health`` every ``every`` seconds during a run, from a process of its own
    (``tests/health_probe.py``): the latencies are the Space's, not the time a poll thread
    would wait for this process's interpreter lock while the load generator holds it.

    Use as a context manager around a run; ``max_latency_s`` and ``failures`` say how
    ``/health`` fared, :meth:`window_max` the slowest poll since its last call.

    Args:
        base_url: The Space's URL.
        every: Seconds between the end of one poll and the next.
        timeout: Seconds after which a poll counts as failed.
    """

    def __init__(self, base_url: str, *, every: float = 0.2, timeout: float = 5.0) -> None:
        self.base_url = base_url
        self.every = every
        self.timeout = timeout
        self.polls = 0
        self.max_latency_s = 0.0
        self.failures: list[str] = []
        self._window: float | None = None
        self._lock = threading.Lock()
        self._probe: subprocess.Popen[str] | None = None
        self._reader = threading.Thread(target=self._read, name="health-watchdog", daemon=True)
        self._armed = threading.Event()

    def __enter__(self) -> HealthWatchdog:
        self._probe = subprocess.Popen(
            [sys.executable, "-m", "tests.health_probe", self.base_url, str(self.every),
             str(self.timeout)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._reader.start()
        # Armed once its first poll has answered (or failed): the run is watched from the start.
        self._armed.wait(timeout=self.timeout + 30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._probe is not None and self._probe.stdin is not None
        self._probe.stdin.close()  # the probe's signal to stop after its poll in flight
        try:
            self._probe.wait(timeout=self.timeout + self.every + 10)
        except subprocess.TimeoutExpired:
            self._probe.kill()
            self._probe.wait()
        self._reader.join(timeout=5)

    def window_max(self) -> float | None:
        """The slowest poll (s) since the last call (None if none ended), and start a new
        window."""
        with self._lock:
            slowest, self._window = self._window, None
        return slowest

    def _read(self) -> None:
        assert self._probe is not None and self._probe.stdout is not None
        for line in self._probe.stdout:
            seconds, _, failure = line.rstrip("\n").partition("\t")
            latency = float(seconds)
            with self._lock:
                self.polls += 1
                self.max_latency_s = max(self.max_latency_s, latency)
                self._window = max(self._window or 0.0, latency)
                if failure:
                    self.failures.append(f"after {latency:.2f} s: {failure}")
            self._armed.set()
        self._armed.set()  # the probe ended (it could not start): do not wait for it


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total
