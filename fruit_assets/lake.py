"""Reading and replacing datasets in the lake, so readers never see a half-written dataset.

Everything goes through Hadoop's FileSystem (via Spark's JVM), which speaks both local paths and, on EMR, `s3://`.

Every write goes to a sibling of the dataset first, `<dataset>.__writing-<tag>`, and is moved in by rename only once it
is complete, so a run killed while Spark writes leaves the committed version untouched:
- Whole datasets (and Spark ML models): `<dataset>` is renamed to `<dataset>.__old-<tag>`, the new version renamed to
  `<dataset>`, then the old one deleted.
- Class-partitioned datasets (Parquet partitioned by `fruit_class`): the new rows are written, partitioned, to the
  sibling; then class by class the committed `fruit_class=<name>` folder is renamed into `<dataset>.__oldparts-<tag>/`
  and the new one renamed in. A write replaces exactly the classes it names and clears named classes that now have no
  rows. (Spark's own dynamic partition overwrite deletes a class's folder before moving the new one in, so a kill
  between the two loses that class; here the previous folder is kept aside until its replacement is in place.)

A kill between two renames leaves a dataset or a class folder missing, with its previous version parked beside it.
`recover()` runs before every write and every read and puts such leftovers right: a parked previous version whose
replacement never arrived is renamed back, and temporary folders of writes that never committed (ours, and Spark's
`.spark-staging-*` / `_temporary`) are deleted. `<tag>` names the writing process (`<ms>-<host>-<pid>-<random>`), so
leftovers of a writer still running on this host are left alone. The lake assumes one writer per dataset at a time.

On S3 a rename is a copy and a delete, so these swaps are not atomic there: a reader can meet a partly moved dataset
for the duration of a swap. `recover()` still restores what a killed swap parked aside.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import time
import uuid
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BinaryType, DoubleType, FloatType, StructType

from fruit_assets.layout import GLOB_CHARS

PARTITION_COLUMN = "fruit_class"
SCHEMA_FILE = "_schema.json"  # kept beside the data so an empty dataset still reads back with its columns

WRITING = ".__writing-"  # <dataset>.__writing-<tag>: a write in progress (or one that died before its commit)
OLD = ".__old-"  # <dataset>.__old-<tag>: the previous version of a whole dataset, during its swap
OLD_PARTS = ".__oldparts-"  # <dataset>.__oldparts-<tag>/fruit_class=...: previous class folders, during their swap
_MARKERS = (WRITING, OLD, OLD_PARTS)
SPARK_LEFTOVERS = (".spark-staging-", "_temporary")  # what a killed Spark write leaves inside its output folder

log = logging.getLogger(__name__)


class LakePathError(ValueError):
    """A configured path would escape the lake root or is malformed."""


def join(root: str, *parts: str) -> str:
    for part in parts:
        if not part or part in (".", "..") or ".." in part.split("/") or part.startswith("/"):
            raise LakePathError(f"Refusing lake path part {part!r}: no empty, absolute or '..' segments allowed.")
    return posixpath.join(root.rstrip("/"), *parts)


_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_uri(value: str, what: str, env_var: str | None = None) -> str:
    """A local path or an s3:// URI from configuration, refused when it could point somewhere unintended.

    Refused: empty values, control characters, `..` segments (Hadoop and boto3 would resolve them differently, and a
    `..` in an S3 key would let a download or a write land outside its folder), credentials inside a URI (they would
    end up in logs and metadata), and schemes other than s3://, s3a:// and file:. The returned value is unchanged but
    for trailing slashes.
    """
    hint = f" (set {env_var})" if env_var else ""
    if not value or not value.strip():
        raise LakePathError(f"The {what} is empty{hint}.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise LakePathError(f"The {what} contains control characters{hint}.")
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = ("file", value[len("file:"):]) if value.startswith("file:") else ("", value)
    if scheme not in ("", "file", "s3", "s3a"):
        raise LakePathError(
            f"Unsupported scheme {scheme + '://'!r} for the {what}{hint}; use a local path or s3://bucket/prefix."
        )
    if scheme in ("s3", "s3a"):
        bucket, _, key = rest.partition("/")
        if "@" in bucket or ":" in bucket:
            # never echo the value: it may hold a secret
            raise LakePathError(
                f"The {what} must not carry credentials or a port in its {scheme}:// URI{hint}; "
                "use an instance profile or AWS_* environment variables instead."
            )
        if not _S3_BUCKET.match(bucket) or ".." in bucket:
            raise LakePathError(f"The {what} {value!r} does not name a valid S3 bucket{hint} (expected s3://bucket/prefix).")
        segments = key.rstrip("/").split("/") if key.rstrip("/") else []
    else:
        segments = rest.split("/")
    if ".." in segments:
        raise LakePathError(f"Refusing the {what} {value!r}{hint}: '..' segments are not allowed.")
    if scheme in ("s3", "s3a") and "" in segments:
        raise LakePathError(f"Refusing the {what} {value!r}{hint}: empty path segments ('//') are not allowed in S3 keys.")
    return value.rstrip("/") or value


_PATTERN_CHARS = GLOB_CHARS + ","  # and commas: PipelineModel.load reads via textFile, which splits paths on them


def validate_root(root: str) -> str:
    """Lake roots are local paths or s3:// URIs without '..' segments; local ones are made absolute."""
    if not root:
        raise LakePathError("The lake root is empty (set FRUITS_LAKE_ROOT or --lake).")
    root = check_uri(root, "lake root", "FRUITS_LAKE_ROOT or --lake")
    special = ", ".join(map(repr, sorted(set(root) & set(_PATTERN_CHARS))))
    if special:
        raise LakePathError(
            f"Refusing the lake root {root!r} (FRUITS_LAKE_ROOT or --lake): Spark reads {special} in a path as a "
            "file pattern or a list of paths, so its datasets could not be read back. Choose a folder name without "
            "any of " + " ".join(_PATTERN_CHARS) + "."
        )
    if "://" not in root and not root.startswith("file:"):
        root = os.path.abspath(os.path.expanduser(root))
    return root.rstrip("/") or "/"


def _jvm(spark: SparkSession):
    return spark.sparkContext._jvm


def _fs(spark: SparkSession, path: str):
    jvm = _jvm(spark)
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = _fs(spark, path)
    return fs.exists(jpath)


def delete(spark: SparkSession, path: str) -> None:
    fs, jpath = _fs(spark, path)
    if fs.exists(jpath):
        fs.delete(jpath, True)


def _quietly_delete(spark: SparkSession, path: str) -> None:
    try:
        delete(spark, path)
    except Exception as exc:  # the original error matters more; recover() retries the cleanup later
        log.warning("could not delete %s: %s", path, exc)


def _mkdirs(spark: SparkSession, path: str) -> None:
    fs, jpath = _fs(spark, path)
    fs.mkdirs(jpath)


def _rename(spark: SparkSession, src: str, dst: str) -> None:
    fs, jsrc = _fs(spark, src)
    jdst = _jvm(spark).org.apache.hadoop.fs.Path(dst)
    if fs.exists(jdst):  # Hadoop would move src *into* an existing folder
        raise OSError(f"Could not move {src} to {dst}: the target exists (is another run writing the same lake?)")
    if not fs.rename(jsrc, jdst):
        raise OSError(f"Could not move {src} to {dst}")


def _children(spark: SparkSession, path: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of each entry in the folder at `path`; empty if there is no such folder."""
    fs, jpath = _fs(spark, path)
    if not fs.exists(jpath) or not fs.getFileStatus(jpath).isDirectory():
        return []
    return [(s.getPath().getName(), s.isDirectory()) for s in fs.listStatus(jpath)]


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path[len("file:"):] if path.startswith("file:") else path


# ------------------------------------------------------------------------------------------------- writer tags

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"
_IN_FLIGHT: set[str] = set()  # tags of the writes this process has under way


def _tag() -> str:
    return f"{int(time.time() * 1000):013x}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def _writing():
    """A fresh tag, marked in flight for as long as the write runs (so a read it triggers leaves its files alone)."""
    tag = _tag()
    _IN_FLIGHT.add(tag)
    try:
        yield tag
    finally:
        _IN_FLIGHT.discard(tag)


def _writer_alive(tag: str) -> bool:
    """Whether the process that made a leftover named with `tag` may still be writing it."""
    parts = tag.split("-")
    if len(parts) != 4 or parts[1] != _HOST:
        return False  # another machine's, or not ours: one writer per dataset at a time is assumed
    try:
        started_ms, pid = int(parts[0], 16), int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return tag in _IN_FLIGHT  # ours: alive only if that write is still under way
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _started_after(pid, started_ms)


def _started_after(pid: int, ms: int) -> bool:
    """True if process `pid` started after the epoch time `ms` (so it is a different process with a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot * 1000 + start_ticks * 1000 // os.sysconf("SC_CLK_TCK") > ms + 1000
    except (OSError, ValueError, IndexError, StopIteration):
        return False


# ---------------------------------------------------------------------------------------------------- recovery


def recover(spark: SparkSession, path: str) -> list[str]:
    """Put right what interrupted writes left around the dataset at `path`; returns what was done.

    - `path` missing but a parked `<path>.__old-*` present: a whole-dataset swap was killed between its renames,
      so the parked (previous, complete) version is renamed back.
    - class folders parked in `<path>.__oldparts-*` whose replacement never arrived are renamed back; the others
      (already replaced) are deleted.
    - `<path>.__writing-*` (writes that never committed), Spark's `.spark-staging-*` / `_temporary` inside `path`,
      and stale `_schema.json.__writing-*` files are deleted.
    Leftovers of a writer that is still running on this host are left alone.
    """
    parent, name = posixpath.split(path.rstrip("/"))
    done: list[str] = []
    leftovers = []
    for child, _ in _children(spark, parent):
        for marker in _MARKERS:
            if child.startswith(name + marker):
                tag = child[len(name + marker):]
                if not _writer_alive(tag):
                    leftovers.append((marker, tag, f"{parent}/{child}"))
    leftovers.sort(key=lambda item: item[1])  # tags start with the time, so the newest comes last

    olds = [p for marker, _, p in leftovers if marker == OLD]
    if olds and not exists(spark, path):
        _rename(spark, olds.pop(), path)
        done.append(f"restored {path} from its previous version (a replace was interrupted between its renames)")
    for parked in olds:
        delete(spark, parked)
        done.append(f"deleted {parked} (superseded previous version)")

    for marker, _, parked in leftovers:
        if marker != OLD_PARTS:
            continue
        for child, _ in _children(spark, parked):
            target = f"{path}/{child}"
            if child.startswith(PARTITION_COLUMN + "=") and not exists(spark, target):
                _mkdirs(spark, path)
                _rename(spark, f"{parked}/{child}", target)
                done.append(f"restored {target} (a class swap was interrupted between its renames)")
        delete(spark, parked)

    for marker, _, tmp in leftovers:
        if marker == WRITING:
            delete(spark, tmp)
            done.append(f"deleted {tmp} (a write that never committed)")

    for child, _ in _children(spark, path):
        stale_schema = child.startswith(SCHEMA_FILE + WRITING) and not _writer_alive(child[len(SCHEMA_FILE + WRITING):])
        if child.startswith(SPARK_LEFTOVERS[0]) or child == SPARK_LEFTOVERS[1] or stale_schema:
            delete(spark, f"{path}/{child}")
            done.append(f"deleted {path}/{child} (left by an interrupted write)")
    for line in done:
        log.warning("lake recovery: %s", line)
    return done


# ------------------------------------------------------------------------------------------------ small files


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Replace the small file at `path` in one step: readers see the old or the new text, never a part of it."""
    data = text.encode("utf-8")
    if _is_local(path):
        # Hadoop's local FS would add a .crc file that a kill could leave out of step with the data.
        local = _local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}{WRITING}{_tag()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        crc = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.crc")
        if os.path.exists(crc):
            os.unlink(crc)
        return
    fs, jpath = _fs(spark, path)  # S3: an object appears whole when its upload completes
    stream = fs.create(jpath, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_text(spark: SparkSession, path: str) -> str:
    if _is_local(path):
        with open(_local(path), encoding="utf-8") as f:
            return f.read()
    fs, jpath = _fs(spark, path)
    stream = fs.open(jpath)
    try:
        return _jvm(spark).org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


# ------------------------------------------------------------------------------------------------------ writes


# The characters Spark escapes as %XX in a partition folder's name (ExternalCatalogUtils.escapePathName, off Windows)
_SPARK_ESCAPES = frozenset("\"#%'*/:=?\\\x7f{[]^" + "".join(map(chr, range(1, 32))))
MAX_FOLDER_NAME_BYTES = 255  # NAME_MAX of local file systems (ext4, xfs, apfs)


def partition_name(class_name: str) -> str:
    """The folder name Spark gives a class's partition: `fruit_class=<name, escaped as Spark escapes it>`."""
    escaped = "".join(f"%{ord(c):02X}" if c in _SPARK_ESCAPES else c for c in class_name)
    return f"{PARTITION_COLUMN}={escaped}"


def check_partition_names(class_names: list[str]) -> None:
    """A class whose partition folder name would pass the file system's limit fails the write deep inside a Spark
    task ("File name too long"); say so before any work."""
    too_long = [c for c in class_names if len(partition_name(c).encode()) > MAX_FOLDER_NAME_BYTES]
    if too_long:
        shown = ", ".join(repr(c[:60] + "..." if len(c) > 60 else c) for c in too_long[:5])
        raise LakePathError(
            f"{len(too_long)} class folder name(s) too long for the lake: {shown}. Each class is stored in a folder "
            f"named {PARTITION_COLUMN}=<class name> (Spark writes some characters as %XX), which must fit in "
            f"{MAX_FOLDER_NAME_BYTES} bytes of UTF-8. Rename those class folders, or leave them out with --classes."
        )


def _parquet_writer(df: DataFrame):
    """df.write, with Parquet's dictionary encoding off for float vectors and file bytes: their values hardly
    repeat, so Parquet would build a dictionary, give up and re-encode plain (writing features took twice as long)."""
    writer = df.write
    for field in df.schema.fields:
        if isinstance(field.dataType, ArrayType) and isinstance(field.dataType.elementType, (FloatType, DoubleType)):
            writer = writer.option(f"parquet.enable.dictionary#{field.name}.list.element", "false")
        elif isinstance(field.dataType, BinaryType):
            writer = writer.option(f"parquet.enable.dictionary#{field.name}", "false")
    return writer


def write_classes(df: DataFrame, path: str, class_names: list[str], row_group_bytes: int | None = None) -> None:
    """Replace exactly `class_names` in the class-partitioned dataset at `path` (see the module docstring).

    `row_group_bytes`: Parquet row-group size (default Parquet's 128 MB). Spark splits a scan only between row
    groups, so smaller groups let a large class be read by several tasks."""
    spark = df.sparkSession
    recover(spark, path)
    with _writing() as tag:
        _write_classes(spark, df, path, class_names, tag, row_group_bytes)


def clear_classes(spark: SparkSession, path: str, class_names: list[str]) -> None:
    """Remove the classes' rows from the class-partitioned dataset at `path`: a write of no rows for them, so a kill
    midway leaves each class either whole or gone, as for any write."""
    write_classes(read(spark, path, []), path, class_names)


def _write_classes(
    spark: SparkSession, df: DataFrame, path: str, class_names: list[str], tag: str, row_group_bytes: int | None
) -> None:
    tmp, aside = f"{path}{WRITING}{tag}", f"{path}{OLD_PARTS}{tag}"
    wanted = {partition_name(c) for c in class_names}
    writer = _parquet_writer(df.repartition(PARTITION_COLUMN))  # one file per class, not one per class in every task
    if row_group_bytes:
        writer = writer.option("parquet.block.size", row_group_bytes)
    try:
        writer.mode("error").partitionBy(PARTITION_COLUMN).parquet(tmp)
        written = {name for name, is_dir in _children(spark, tmp) if is_dir and name.startswith(PARTITION_COLUMN + "=")}
        if written - wanted:
            raise ValueError(
                f"DataFrame holds rows of classes other than {class_names} "
                f"({sorted(written - wanted)[:5]}); refusing to write them."
            )
    except BaseException:
        _quietly_delete(spark, tmp)
        raise
    try:
        _mkdirs(spark, path)
        write_text(spark, f"{path}/{SCHEMA_FILE}", df.schema.json())
        for name in sorted(wanted):
            target = f"{path}/{name}"
            if exists(spark, target):
                _mkdirs(spark, aside)
                _rename(spark, target, f"{aside}/{name}")
            if name in written:
                _rename(spark, f"{tmp}/{name}", target)
    except BaseException:
        _IN_FLIGHT.discard(tag)  # this write is over: let recover() treat its leftovers as an interrupted write's
        recover(spark, path)  # puts back any class folder parked aside, deletes the unfinished write
        raise
    delete(spark, aside)
    delete(spark, tmp)


def replace(path: str, spark: SparkSession, write) -> None:
    """Write via `write(tmp_path)` next to `path`, then swap it in; the old version survives a failed write."""
    recover(spark, path)
    with _writing() as tag:
        tmp, old = f"{path}{WRITING}{tag}", f"{path}{OLD}{tag}"
        try:
            write(tmp)
        except BaseException:
            _quietly_delete(spark, tmp)
            raise
        had_previous = exists(spark, path)
        if had_previous:
            _rename(spark, path, old)
        try:
            _rename(spark, tmp, path)
        except BaseException:
            if had_previous and not exists(spark, path):
                _rename(spark, old, path)
            _quietly_delete(spark, tmp)
            raise
    delete(spark, old)


def write_table(df: DataFrame, path: str) -> None:
    def write(tmp: str) -> None:
        _parquet_writer(df).mode("error").parquet(tmp)
        write_text(df.sparkSession, f"{tmp}/{SCHEMA_FILE}", df.schema.json())

    replace(path, df.sparkSession, write)


def write_csv(df: DataFrame, path: str) -> None:
    """CSV for people and spreadsheets: array columns flattened to `<name>_1..n`, with a header."""
    flat = []
    for field in df.schema.fields:
        if field.dataType.typeName() == "array":
            width = df.select(F.max(F.size(field.name))).first()[0] or 0
            flat += [F.col(field.name)[i].alias(f"{field.name}_{i + 1}") for i in range(width)]
        else:
            flat.append(F.col(field.name))
    out = df.select(*flat)
    replace(path, df.sparkSession, lambda tmp: out.write.mode("error").option("header", True).csv(tmp))


def _schema(spark: SparkSession, path: str) -> StructType | None:
    schema_path = f"{path}/{SCHEMA_FILE}"
    if not exists(spark, schema_path):
        return None
    try:
        return StructType.fromJson(json.loads(read_text(spark, schema_path)))
    except (ValueError, KeyError, TypeError) as exc:  # unreadable: fall back to the Parquet footers
        log.warning("ignoring unreadable %s: %s", schema_path, exc)
        return None


def read(spark: SparkSession, path: str, class_names: list[str] | None = None) -> DataFrame:
    """The dataset at `path`, restricted to `class_names` when given (class-partitioned datasets only)."""
    recover(spark, path)
    if not exists(spark, path):
        raise FileNotFoundError(f"No dataset at {path}: materialize its asset first.")
    reader = spark.read.option("basePath", path)
    schema = _schema(spark, path)
    if schema is not None:
        reader = reader.schema(schema)
    df = reader.parquet(path)
    if class_names is not None:
        df = df.where(F.col(PARTITION_COLUMN).isin(class_names))
    return df
