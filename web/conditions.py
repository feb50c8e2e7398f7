"""Request header fields as RFC 9110 reads them, not as the first line says.

A field sent on several lines is one comma-separated list (§5.3): two
`If-Match` lines are one list of entity tags, and two `Range` lines one
value with a comma in it (several ranges: ignored). aiohttp's
`request.if_match` and `headers.get()` read the first line only, so a
second line naming the current version would be lost; every conditional
and range field is read here instead.
"""

import re
from dataclasses import dataclass

from aiohttp import web

# One entity tag (§8.8.3: etagc excludes only `"`, controls and space) and
# the list separator after it; empty list elements are allowed (§5.6.1).
_TAG = re.compile(r'[\s,]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*(?:,|\Z)')


@dataclass(frozen=True)
class EntityTag:
    """An entity tag as listed: its opaque value without quotes; `*` is
    `any` (If-Match: *, If-None-Match: *)."""

    value: str
    weak: bool = False
    any: bool = False


def field_value(request: web.Request, name: str) -> str | None:
    """The field's lines combined into one value (§5.3), or None if absent."""
    lines = request.headers.getall(name, [])
    return ", ".join(lines) if lines else None


def single_value(request: web.Request, name: str) -> str | None:
    """A field that takes one value (a date, If-Range): None when absent or
    sent more than once, which makes it invalid."""
    lines = request.headers.getall(name, [])
    return lines[0] if len(lines) == 1 else None


def entity_tags(request: web.Request, name: str) -> tuple[EntityTag, ...] | None:
    """If-Match or If-None-Match as a list: None when the field is absent;
    empty when it lists nothing or is malformed, so it matches nothing (an
    If-Match then fails: a change must never go through on a condition the
    server could not read)."""
    value = field_value(request, name)
    if value is None:
        return None
    if value.strip() == "*":
        return (EntityTag("*", any=True),)
    tags, at = [], 0
    while (match := _TAG.match(value, at)) is not None:
        tags.append(EntityTag(match[2], weak=match[1] is not None))
        at = match.end()
    if value[at:].strip(" \t,"):
        return ()
    return tuple(tags)
