"""Checks a configuration before any Spark work, so a run that cannot succeed fails in seconds, saying what to change.

`preflight()` is what `fruits run` calls first; its parts are usable on their own (the settings resources validate
their paths with `check_images_root` & co., so a run launched from the UI gets the same messages). In order, cheapest
first: every configured path or URI (no `..` segments, no credentials in URIs, known schemes); k within 1..1280; the
images root exists and is laid out as expected; the classes asked for have images; k is not above the number of
images the PCA can see; the weights file is readable MobileNetV2 weights (engines.prepare_artifact, which also fills
the converted-model cache the run then reuses).

Everything raised derives from ValueError and is listed in CONFIG_ERRORS.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from fruit_assets.engines import EMBEDDING_DIM, ENGINES, WeightsError
from fruit_assets.lake import LakePathError, check_partition_names, check_uri, validate_root
from fruit_assets.layout import EXPECTED_LAYOUT, Discovery, LayoutError, discover, is_s3


class ConfigError(ValueError):
    """A configuration that cannot work; the message says which setting to change."""


CONFIG_ERRORS = (ConfigError, LayoutError, LakePathError, WeightsError)

IMAGES_HINT = "FRUITS_IMAGES_ROOT or --images"
WEIGHTS_HINT = "FRUITS_MOBILENET_WEIGHTS or --weights"
K_HINT = "FRUITS_PCA_K or --pca-k"


def check_images_root(root: str) -> str:
    return check_uri(root, "images root", IMAGES_HINT)


def check_weights_location(weights: str | None) -> str | None:
    """None means Keras's own download; an s3:// URI must name an object (it is downloaded under the cache dir)."""
    if weights is None:
        return None
    weights = check_uri(weights, "weights location", WEIGHTS_HINT)
    if is_s3(weights) and (weights.endswith("/") or "/" not in weights.split("://", 1)[1]):
        raise LakePathError(f"The weights location {weights!r} names no file ({WEIGHTS_HINT}): expected s3://bucket/key.h5.")
    return weights


def check_cache_dir(cache_dir: str) -> str:
    check_uri(cache_dir, "engine cache folder", "FRUITS_CACHE_DIR")
    if "://" in cache_dir:
        raise LakePathError(f"FRUITS_CACHE_DIR must be a local folder, not {cache_dir!r}.")
    return cache_dir


def check_k(k: int) -> int:
    if not 1 <= k <= EMBEDDING_DIM:
        raise ConfigError(
            f"PCA k={k} is impossible: MobileNetV2 gives {EMBEDDING_DIM} features per image, so choose "
            f"1 <= k <= {EMBEDDING_DIM} ({K_HINT})."
        )
    return k


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine {engine!r}: use one of {', '.join(ENGINES)} (FRUITS_ENGINE or --engine).")
    return engine


def select_classes(found: Discovery, asked: list[str] | None) -> list[str]:
    """The classes to embed: every class with images, or those asked for, each of which must have images."""
    if not asked:
        return found.class_names
    problems = []
    for name in dict.fromkeys(asked):
        if name in found.classes:
            continue
        if name in found.inventory:
            files = found.inventory[name]
            problems.append(
                f"class folder {name!r} (in {', '.join(files.splits)}) holds no image files "
                f"({files.files} other file(s)); expected {EXPECTED_LAYOUT}"
            )
        else:
            close = difflib.get_close_matches(name, found.class_names, n=3)
            problems.append(
                f"no class folder named {name!r} under any split of {found.root!r}"
                + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
            )
    if problems:
        known = found.class_names
        raise ConfigError(
            "No images for the class(es) asked for: " + "; ".join(problems) + ". Known classes: "
            + ", ".join(known[:20]) + (f" ... ({len(known)} in all; `fruits classes` lists them)" if len(known) > 20 else "")
        )
    return sorted(set(asked))


def lake_rows_per_class(lake_root: str, dataset: str = "mobilenet_features") -> dict[str, int] | None:
    """Rows per class already in a local lake dataset, from the Parquet footers (no Spark); None where unknown (S3)."""
    if "://" in lake_root:
        return None
    folder = Path(lake_root.removeprefix("file:")) / dataset
    if not folder.is_dir():
        return {}
    import pyarrow.parquet as pq

    rows: dict[str, int] = {}
    for part in folder.iterdir():
        if not (part.is_dir() and part.name.startswith("fruit_class=")):
            continue
        name = unquote(part.name[len("fruit_class="):])  # Spark escapes partition values as %XX
        files = [f for f in part.rglob("*.parquet") if not f.name.startswith((".", "_"))]
        rows[name] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return rows


def check_k_against_images(k: int, found: Discovery, classes: list[str], limit_per_class: int | None,
                           lake_root: str, prune: bool = False) -> int | None:
    """At most how many images the PCA after this run can see; ConfigError if k exceeds it. None if unknown.
    `prune`: the run first removes the classes without images under the root now, so their rows do not count."""
    new = {c: min(found.inventory[c].images, limit_per_class or found.inventory[c].images) for c in classes}
    others = lake_rows_per_class(lake_root)
    if others is None:
        return None  # S3 lake: the asset checks k against the exact count when it fits the PCA
    kept = {c: n for c, n in others.items() if c not in new and (c in found.classes or not prune)}
    bound = sum(new.values()) + sum(kept.values())
    if bound < 2:
        raise ConfigError(
            f"The PCA needs at least 2 images to estimate a covariance, and it would see at most {bound}: "
            "embed more images (more classes, or a higher --limit-per-class)."
        )
    if k > bound:
        raise ConfigError(
            f"PCA k={k} is larger than the number of images the PCA would be fitted on: at most {bound} "
            f"({sum(new.values())} image file(s) in the {len(new)} class(es) of this run"
            + (f", limited to {limit_per_class} per class" if limit_per_class else "")
            + (f", plus {bound - sum(new.values())} row(s) of other classes already in the lake" if bound > sum(new.values()) else "")
            + f"). Choose k <= {bound} ({K_HINT}), or embed more images."
        )
    return bound


def check_weights(engine: str, weights: str | None, cache_dir: str):
    """Engines.prepare_artifact on the configured weights: WeightsError if they are missing, unreadable or not
    MobileNetV2's. Returns the artifact (its converted model stays cached for the run)."""
    from fruit_assets.assets.features import local_weights
    from fruit_assets.engines import prepare_artifact

    check_weights_location(weights)
    try:
        local = local_weights(weights, cache_dir)
    except Exception as exc:
        raise WeightsError(f"Cannot fetch the weights {weights!r} ({WEIGHTS_HINT}): {type(exc).__name__}: {exc}") from exc
    return prepare_artifact(engine, local, Path(cache_dir).expanduser())


@dataclass
class Plan:
    """What preflight found: the run that will happen."""

    discovery: Discovery
    classes: list[str]
    pca_images_bound: int | None
    artifact: object | None = None
    notes: list[str] = field(default_factory=list)  # things to tell the user that are not errors


def preflight(settings: dict, classes: list[str] | None = None, limit_per_class: int | None = None,
              weights: bool = True, prune: bool = False) -> Plan:
    """Validate a whole configuration (`resources.settings_resources()`) before any Spark work.

    Raises one of CONFIG_ERRORS with a specific message, or returns the Plan.
    """
    images, mobilenet, pca, lake_settings = settings["images"], settings["mobilenet"], settings["pca"], settings["lake_settings"]
    check_images_root(images.root)
    lake_root = validate_root(lake_settings.root)
    check_weights_location(mobilenet.weights)
    check_cache_dir(mobilenet.cache_dir)
    check_engine(mobilenet.engine)
    check_k(pca.k)
    if limit_per_class is not None and limit_per_class < 1:
        raise ConfigError(f"--limit-per-class must be at least 1, not {limit_per_class}.")

    found = discover(images.root)
    selected = select_classes(found, classes)
    if not selected:
        raise LayoutError(
            f"No class folder under {found.root!r} holds an image file (empty: {found.empty_classes[:10]}). "
            f"Expected {EXPECTED_LAYOUT}"
        )
    check_partition_names(selected)
    bound = check_k_against_images(pca.k, found, selected, limit_per_class, lake_root, prune)
    plan = Plan(discovery=found, classes=selected, pca_images_bound=bound)
    if found.empty_classes:
        plan.notes.append(
            f"{len(found.empty_classes)} class folder(s) without image files, so no partition and no rows: "
            f"{found.empty_classes[:10]}"
        )
    if found.outside_classes:
        plan.notes.append(found.outside_message())
    if note := found.nesting_note():
        plan.notes.append(note)
    if weights:
        plan.artifact = check_weights(mobilenet.engine, mobilenet.weights, os.path.expanduser(mobilenet.cache_dir))
    return plan
