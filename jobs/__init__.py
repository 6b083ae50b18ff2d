"""Jobs: the whole graph's two halves (per-class work, and the PCA over all classes), and removing classes.

Returned from module-level functions so `reconstructable()` can rebuild them in another process, as the EMR step
launcher and the multiprocess executor require.
"""

from __future__ import annotations

import dagster as dg

from fruit_assets.prune import CLASS_DATASETS, prune_classes as prune_classes_job

CLASS_ASSETS = dg.AssetSelection.assets(*CLASS_DATASETS)
PCA_ASSETS = dg.AssetSelection.assets("pca_model", "pca_features")

embed_classes_job = dg.define_asset_job(
    "embed_classes",
    selection=CLASS_ASSETS,
    description="Read, label and embed the images of the selected fruit classes (one Spark application).",
)
reduce_job = dg.define_asset_job(
    "reduce",
    selection=PCA_ASSETS,
    description="Fit the PCA over every materialized class and project every image.",
)
ALL_JOBS = [embed_classes_job, reduce_job, prune_classes_job]


def _job(name: str) -> dg.JobDefinition:
    from fruit_assets.definitions import build_definitions

    return build_definitions().resolve_job_def(name)


def embed_classes() -> dg.JobDefinition:
    return _job("embed_classes")


def reduce() -> dg.JobDefinition:
    return _job("reduce")


def prune_classes() -> dg.JobDefinition:
    return _job("prune_classes")
