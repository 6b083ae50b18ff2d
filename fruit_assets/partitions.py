"""One Dagster partition per fruit class, following the class folders found in the images root.

Dynamic partitions let a new class folder become a partition without a code change. Dagster's UI splits partition
selections on commas and refuses a few other substrings in keys, so keys are the class names with those characters
percent-encoded; `class_name(key)` gives the folder name back.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import dagster as dg

fruit_class_partitions = dg.DynamicPartitionsDefinition(name="fruit_class")

_UNSAFE = re.compile(r"[%,\[\]*\x00-\x1f\x7f]|\.\.\.")


def partition_key(class_name: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group(0).encode()), class_name)


def class_name(key: str) -> str:
    return unquote(key)


def contiguous_ranges(selected: list[str], ordered: list[str]) -> list[tuple[str, str]]:
    """Group selected keys into runs of neighbours in `ordered` (Dagster's single-run backfills take ranges)."""
    wanted = set(selected)
    ranges: list[tuple[str, str]] = []
    start = prev = None
    for key in ordered:
        if key in wanted:
            start = start or key
            prev = key
        elif start is not None:
            ranges.append((start, prev))
            start = None
    if start is not None:
        ranges.append((start, prev))
    return ranges
