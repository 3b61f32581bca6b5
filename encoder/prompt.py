"""Item fields -> the LEARN-style prompt that the frozen LLM reads.

A template is a run of segments, each "literal text + one {field}": "Title: {title} Brand: {brand} ...".
A segment whose field is missing or blank is dropped whole (label included), so an item without a
brand reads "Title: ... Category: ..." and never "Brand:  Category:". Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DEFAULT_TEMPLATE = "Title: {title} Brand: {brand} Category: {categories} Description: {description}"

_SEGMENT = re.compile(r"([^{}]*)\{(\w+)\}")
_SPACES = re.compile(r"\s+")


def clean_field(value: Any) -> str:
    """A field value as one tidy line: lists joined with ', ', whitespace collapsed, None -> ''."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = ", ".join(clean_field(v) for v in value if clean_field(v))
    return _SPACES.sub(" ", str(value)).strip()


def template_fields(template: str) -> list[str]:
    """The field names a template asks for, in order."""
    return [m.group(2) for m in _SEGMENT.finditer(template)]


def build_prompt(fields: Mapping[str, Any], template: str = DEFAULT_TEMPLATE) -> str:
    """Fill `template` from `fields`, leaving out the segments of missing/empty fields.

    >>> build_prompt({"title": "Glue", "brand": ""}, "Title: {title} Brand: {brand}")
    'Title: Glue'
    """
    parts: list[str] = []
    end = 0
    for m in _SEGMENT.finditer(template):
        end = m.end()
        value = clean_field(fields.get(m.group(2)))
        if value:
            parts.append(m.group(1) + value)
    tail = template[end:]
    text = "".join(parts) + (tail if parts else "")
    return _SPACES.sub(" ", text).strip()
