"""The images root's layout, `<root>/<Split>/<Class name>/<file>`, and where its class folders are.

Listing runs in the Dagster process (which on EMR has no Spark), so it uses the OS for local folders and boto3 for
`s3://` roots. Spark reads the files themselves later, per class.

The listing is also the inventory that lets a run say exactly what it skipped: every file under a class folder is
either an image that Spark reads (and that becomes a feature vector or an error row) or is ignored with a reason
(not an image extension; a hidden name or a broken symbolic link, which Spark's file sources skip without a word).
Empty image files and images this user may not read are error rows too: Spark gives no row for either (it skips
empty files and cannot open the others), so raw_images writes their rows itself.
Image files outside any class folder and class folders without images are reported, not processed. Like Hadoop's
local file system, the listing follows symbolic links to folders. What Spark would silently misread (a link that
loops, a class folder linked to nothing, names that are not UTF-8) is a LayoutError; a root that looks one level too
high gets a warning (`Discovery.nesting_note`).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from fruit_assets.images import is_image_path

EXPECTED_LAYOUT = "<images root>/<Split>/<Class name>/<file>.jpg|.jpeg|.png"
IGNORED_EXAMPLES = 20  # ignored files remembered per class (all are counted)


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


GLOB_CHARS = "\\[]{}*?"  # what Hadoop reads as a file pattern in a path


def glob_escape(path: str) -> str:
    """Class names may contain Hadoop's pattern characters: escape them so a folder is read as named."""
    return re.sub(f"([{re.escape(GLOB_CHARS)}])", r"\\\1", path)


def spark_skips(name: str, folder: bool) -> bool:
    """Whether Spark's file sources skip a file or folder of this name. Listing (InMemoryFileIndex) keeps
    `_metadata*` and `_common_metadata*` for Parquet, but then isDataPath drops such files too, not folders."""
    exclude = (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")
    return exclude and not (folder and name.startswith(("_common_metadata", "_metadata")))


def ignore_reason(parts: list[str]) -> str | None:
    """Why the file at `<class folder>/<parts...>` is not embedded, or None for an image file Spark reads."""
    for i, part in enumerate(parts):
        folder = i < len(parts) - 1
        if spark_skips(part, folder):
            what = "folder" if folder else "file"
            return f"hidden {what} name {part!r} (starts with '.' or '_'; Spark skips such names)"
    if not is_image_path(parts[-1]):
        return "not an image file (only .jpg, .jpeg and .png are embedded)"
    return None


@dataclass
class ClassFiles:
    """What one class folder holds, over every split."""

    splits: list[str] = field(default_factory=list)  # splits that have a folder for this class
    image_splits: set[str] = field(default_factory=set)  # splits whose folder holds images
    files: int = 0  # every file under those folders
    images: int = 0  # image files Spark reads: each becomes a feature vector or an error row
    in_subfolders: int = 0  # of which deeper than <Split>/<Class>/ (still labelled with the class)
    ignored: int = 0  # files - images
    ignored_examples: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), the first few
    zero_byte_images: list[str] = field(default_factory=list)  # image files of 0 bytes, which Spark does not list
    unreadable_images: list[tuple[str, int]] = field(default_factory=list)  # (path, size): no read permission

    def add(
        self, split: str, path: str, parts: list[str], size: int, reason: str | None = None, readable: bool = True
    ) -> None:
        self.files += 1
        reason = reason or ignore_reason(parts)
        if reason is None:
            self.images += 1
            self.image_splits.add(split)
            self.in_subfolders += len(parts) > 1
            if size == 0:
                self.zero_byte_images.append(path)
            elif not readable:
                self.unreadable_images.append((path, size))
        else:
            self.ignored += 1
            if len(self.ignored_examples) < IGNORED_EXAMPLES:
                self.ignored_examples.append((path, reason))


@dataclass
class Discovery:
    """What a scan of the images root found."""

    root: str
    classes: dict[str, list[str]] = field(default_factory=dict)  # class name -> splits holding image files
    empty_classes: list[str] = field(default_factory=list)  # class folders with no image file in any split
    outside_classes: list[str] = field(default_factory=list)  # image files not inside <Split>/<Class>/
    inventory: dict[str, ClassFiles] = field(default_factory=dict)  # every class folder, empty ones included

    @property
    def class_names(self) -> list[str]:
        return sorted(self.classes)

    def images(self, class_names) -> int:
        return sum(self.inventory[c].images for c in class_names if c in self.inventory)

    def outside_message(self, limit: int = 5) -> str:
        shown = ", ".join(self.outside_classes[:limit]) + (" ..." if len(self.outside_classes) > limit else "")
        return (
            f"{len(self.outside_classes)} image file(s) outside any class folder, not processed: {shown}. "
            f"Expected layout: {EXPECTED_LAYOUT}; move each into the folder of its class."
        )

    def nesting_note(self) -> str | None:
        """Images only in subfolders of every class folder keep their class, but that is also what a root one
        level too high looks like (`data/` for `data/fruits-360/Test/...`): worth a warning, not a refusal."""
        if not self.classes or any(f.in_subfolders < f.images for f in self.inventory.values()):
            return None
        splits = sorted({s for f in self.inventory.values() for s in f.splits})
        return (
            f"every image under {self.root!r} lies in a subfolder of its class folder, so the labels will be "
            f"{self.class_names[:5]}{' ...' if len(self.classes) > 5 else ''} (the folders right under {splits[:5]}). "
            f"If those are splits, the images root is one level too high: use {self.root}/{splits[0]} "
            f"(FRUITS_IMAGES_ROOT or --images). Expected {EXPECTED_LAYOUT}"
        )

    def _finish(self) -> "Discovery":
        for name, files in self.inventory.items():
            if files.images:
                self.classes[name] = sorted(files.image_splits)
        self.empty_classes = sorted(n for n, f in self.inventory.items() if not f.images)
        return self


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


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as os.fsdecode keeps them


def printable(path: str) -> str:
    """`path` with any byte that is not UTF-8 written as \\xNN (only ignored files keep such names)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _walk(top: str):
    """os.walk following symbolic links to folders, as Hadoop's local listing does, refusing a link that loops; yields
    (folder, dirs, names, hidden). Links inside hidden folders, and hidden links, are not followed: Spark never lists
    them, and `hidden` says a folder is one Spark never enters."""

    def unlistable(error: OSError):
        raise LayoutError(f"Cannot list {error.filename!r} under a class folder: {error.strerror}.")

    above = {top: [os.path.realpath(top)]}  # folder -> real paths of it and the folders it is in, in this walk
    for folder, dirs, names in os.walk(top, onerror=unlistable, followlinks=True):
        chain = above.pop(folder)
        hidden = any(spark_skips(part, True) for part in Path(folder).relative_to(top).parts)
        dirs.sort()
        for name in list(dirs):
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                above[path] = None if hidden else [*chain, os.path.realpath(path)]
            elif hidden or spark_skips(name, True):
                dirs.remove(name)
                names.append(name)  # counted, as an ignored file, like any other entry Spark skips
            else:
                real = os.path.realpath(path)
                if any(os.path.commonpath([real, r]) == real for r in chain):
                    raise LayoutError(
                        f"The symbolic link {path!r} leads to {real!r}, which contains the link itself: Spark would "
                        f"list it endlessly (the same images again and again). Remove the link or point it elsewhere."
                    )
                above[path] = [*chain, real]
        yield folder, dirs, names, hidden


def _discover_local(root: str) -> Discovery:
    top = Path(root)
    if not top.exists():
        raise LayoutError(f"Images root {root!r} does not exist (set FRUITS_IMAGES_ROOT or --images).")
    if not top.is_dir():
        raise LayoutError(f"Images root {root!r} is not a folder. Expected {EXPECTED_LAYOUT}")
    found = Discovery(root=root)
    undecodable: list[str] = []

    def decodable(path) -> bool:
        """Dagster cannot store a class name that is not UTF-8, and the JVM lists no such file."""
        if _UNDECODABLE.search(os.path.basename(path)):
            undecodable.append(str(path))
            return False
        return True

    try:
        splits = sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".") and decodable(p))
    except PermissionError as exc:
        raise LayoutError(f"Images root {root!r} cannot be listed: {exc}") from None
    for split_dir in splits:
        for entry in sorted(split_dir.iterdir()):
            if entry.name.startswith(".") or not decodable(entry):
                continue
            if entry.is_file():
                if is_image_path(entry.name):
                    found.outside_classes.append(str(entry))
                continue
            if entry.is_symlink() and not entry.exists():  # an unmounted disk must not look like an emptied class
                raise LayoutError(f"The class folder {str(entry)!r} is a symbolic link to {os.readlink(entry)!r}, "
                                  "which does not exist.")
            if not entry.is_dir():
                continue
            files = found.inventory.setdefault(entry.name, ClassFiles())
            files.splits.append(split_dir.name)
            for folder, dirs, names, hidden in _walk(str(entry)):
                relative = Path(folder).relative_to(entry).parts
                if not hidden:  # what Spark never lists cannot trouble it
                    dirs[:] = [d for d in dirs if spark_skips(d, True) or decodable(os.path.join(folder, d))]
                    names = [n for n in names if spark_skips(n, False) or decodable(os.path.join(folder, n))]
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    try:
                        size, reason, readable = os.stat(path).st_size, None, os.access(path, os.R_OK)
                    except OSError as exc:  # Hadoop's listing skips what it cannot stat, without a word
                        size, readable = -1, False
                        reason = ("broken symbolic link: its target does not exist" if os.path.islink(path)
                                  else f"cannot be read: {exc.strerror}")
                    files.add(split_dir.name, printable(path), [*relative, name], size, reason, readable)
    for entry in sorted(top.iterdir()):
        if entry.is_file() and is_image_path(entry.name) and decodable(entry):
            found.outside_classes.append(str(entry))
    if undecodable:
        raise LayoutError(
            f"{len(undecodable)} name(s) under {root!r} are not valid UTF-8, so Spark cannot read them and a class "
            f"cannot be named after them: {', '.join(repr(os.fsencode(p)) for p in undecodable[:5])}"
            + (" ..." if len(undecodable) > 5 else "")
            + f". Rename them to UTF-8, e.g. `convmv -r -f latin1 -t utf-8 --notest {root}`."
        )
    return found._finish()


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, (prefix + "/" if prefix else "")


def _discover_s3(root: str) -> Discovery:
    import boto3

    bucket, prefix = _split_s3(root)
    scheme = root.split("://", 1)[0]  # paths as Spark names them: s3://... or s3a://...
    s3 = boto3.client("s3")
    paginator = s3.get_paginator("list_objects_v2")

    def children(pfx: str) -> tuple[list[str], list[str]]:
        dirs, files = [], []
        for page in paginator.paginate(Bucket=bucket, Prefix=pfx, Delimiter="/"):
            dirs += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            files += [o["Key"] for o in page.get("Contents", []) if o["Key"] != pfx]
        return dirs, files

    def every_key(pfx: str) -> list[tuple[str, int]]:
        return [
            (o["Key"], o.get("Size", -1))
            for page in paginator.paginate(Bucket=bucket, Prefix=pfx) for o in page.get("Contents", [])
            if not o["Key"].endswith("/")  # "folder" marker objects are not files
        ]

    found = Discovery(root=root)
    try:
        split_prefixes, top_files = children(prefix)
    except s3.exceptions.NoSuchBucket:
        raise LayoutError(f"Images root {root!r}: bucket {bucket!r} does not exist.") from None
    found.outside_classes += [f"{scheme}://{bucket}/{k}" for k in top_files if is_image_path(k)]
    folders = []
    for split_prefix in split_prefixes:
        split = split_prefix[len(prefix):].rstrip("/")
        if split.startswith("."):
            continue
        class_prefixes, split_files = children(split_prefix)
        found.outside_classes += [f"{scheme}://{bucket}/{k}" for k in split_files if is_image_path(k)]
        folders += [(split, p, p[len(split_prefix):].rstrip("/")) for p in class_prefixes]
    folders = [f for f in folders if not f[2].startswith(".")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        listings = list(pool.map(lambda f: every_key(f[1]), folders))
    for (split, class_prefix, name), keys in zip(folders, listings):
        files = found.inventory.setdefault(name, ClassFiles())
        files.splits.append(split)
        for key, size in sorted(keys):
            files.add(split, f"{scheme}://{bucket}/{key}", key[len(class_prefix):].split("/"), size)
    return found._finish()


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
