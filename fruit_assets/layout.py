"""The images root's layout, `<root>/<Split>/<Class name>/<file>`, and where its class folders are.

Listing runs in the Dagster process (which on EMR has no Spark), so it uses the OS for local folders and boto3 for
`s3://` roots. Spark reads the files themselves later, per class.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from fruit_assets.images import is_image_path

EXPECTED_LAYOUT = "<images root>/<Split>/<Class name>/<file>.jpg|.jpeg|.png"


class LayoutError(ValueError):
    """The images root is missing or is not laid out as EXPECTED_LAYOUT."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://")


def normalize_root(root: str) -> str:
    """A root without trailing slash: an absolute local path, or an s3:// URI."""
    if is_s3(root):
        return root.rstrip("/")
    if root.startswith("file:"):
        root = unquote(urlparse(root).path)
    return str(Path(root).expanduser().resolve())


def spark_path(root: str) -> str:
    """How Spark names a root in its `path` column (binaryFile gives `file:/abs/...` for local files)."""
    return root if is_s3(root) else "file:" + root


_GLOB_CHARS = re.compile(r"([\\\[\]{}*?])")


def glob_escape(path: str) -> str:
    """Hadoop globs paths with [] {} * ?; class names may contain them."""
    return _GLOB_CHARS.sub(r"\\\1", path)


@dataclass
class Discovery:
    """What a scan of the images root found."""

    root: str
    classes: dict[str, list[str]] = field(default_factory=dict)  # class name -> splits holding image files
    empty_classes: list[str] = field(default_factory=list)  # class folders with no image file in any split
    outside_classes: list[str] = field(default_factory=list)  # image files not inside <Split>/<Class>/

    @property
    def class_names(self) -> list[str]:
        return sorted(self.classes)


def discover(root: str) -> Discovery:
    """Class folders under every split of `root`, failing with a clear message when the root is unusable."""
    root = normalize_root(root)
    found = _discover_s3(root) if is_s3(root) else _discover_local(root)
    if not found.classes and not found.empty_classes:
        raise LayoutError(
            f"No class folders under {root!r}. Expected {EXPECTED_LAYOUT}"
            + (f"; image files found outside class folders: {found.outside_classes[:5]}" if found.outside_classes else "")
        )
    return found


def _discover_local(root: str) -> Discovery:
    top = Path(root)
    if not top.exists():
        raise LayoutError(f"Images root {root!r} does not exist (set FRUITS_IMAGES_ROOT or --images).")
    if not top.is_dir():
        raise LayoutError(f"Images root {root!r} is not a folder. Expected {EXPECTED_LAYOUT}")
    found = Discovery(root=root)
    seen_empty: set[str] = set()
    for split_dir in sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for entry in sorted(split_dir.iterdir()):
            if entry.is_file():
                if is_image_path(entry.name):
                    found.outside_classes.append(str(entry))
                continue
            if entry.name.startswith("."):
                continue
            if any(is_image_path(f) for _, _, files in os.walk(entry) for f in files):
                found.classes.setdefault(entry.name, []).append(split_dir.name)
            else:
                seen_empty.add(entry.name)
    for entry in sorted(top.iterdir()):
        if entry.is_file() and is_image_path(entry.name):
            found.outside_classes.append(str(entry))
    found.empty_classes = sorted(seen_empty - set(found.classes))
    return found


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, (prefix + "/" if prefix else "")


def _discover_s3(root: str) -> Discovery:
    import boto3

    bucket, prefix = _split_s3(root)
    s3 = boto3.client("s3")
    paginator = s3.get_paginator("list_objects_v2")

    def children(pfx: str) -> tuple[list[str], list[str]]:
        dirs, files = [], []
        for page in paginator.paginate(Bucket=bucket, Prefix=pfx, Delimiter="/"):
            dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            files += [o["Key"] for o in page.get("Contents", []) if o["Key"] != pfx]
        return dirs, files

    found = Discovery(root=root)
    try:
        split_prefixes, top_files = children(prefix)
    except s3.exceptions.NoSuchBucket:
        raise LayoutError(f"Images root {root!r}: bucket {bucket!r} does not exist.") from None
    found.outside_classes += [f"s3://{bucket}/{k}" for k in top_files if is_image_path(k)]
    seen_empty: set[str] = set()
    for split_prefix in split_prefixes:
        split = split_prefix[len(prefix):].rstrip("/")
        class_prefixes, split_files = children(split_prefix)
        found.outside_classes += [f"s3://{bucket}/{k}" for k in split_files if is_image_path(k)]
        for class_prefix in class_prefixes:
            name = class_prefix[len(split_prefix):].rstrip("/")
            has_image = any(
                is_image_path(o["Key"])
                for page in paginator.paginate(Bucket=bucket, Prefix=class_prefix)
                for o in page.get("Contents", [])
            )
            if has_image:
                found.classes.setdefault(name, []).append(split)
            else:
                seen_empty.add(name)
    found.empty_classes = sorted(seen_empty - set(found.classes))
    return found


def class_folders(root: str, class_names: list[str]) -> dict[str, list[str]]:
    """For each class, its folder under every split that has one (Spark reads these, recursively)."""
    root = normalize_root(root)
    if is_s3(root):
        import boto3

        bucket, prefix = _split_s3(root)
        s3 = boto3.client("s3")
        splits = [
            p["Prefix"][len(prefix):].rstrip("/")
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for p in page.get("CommonPrefixes", [])
        ]

        def has(split: str, name: str) -> bool:
            return s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{split}/{name}/", MaxKeys=1).get("KeyCount", 0) > 0
    else:
        if not Path(root).is_dir():
            raise LayoutError(f"Images root {root!r} does not exist or is not a folder.")
        splits = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))

        def has(split: str, name: str) -> bool:
            return (Path(root) / split / name).is_dir()

    return {name: [f"{root}/{split}/{name}" for split in splits if has(split, name)] for name in class_names}
