"""What a run left in the Dagster instance: the metadata of the latest materializations of an asset."""

import dagster as dg

from fruit_assets.partitions import class_name


def latest(instance, asset: str) -> dict:
    """The latest materialization's metadata (for a per-class asset: the run's totals, and one class's counts)."""
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset} was not materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def partition_events(instance, asset: str) -> dict[str, dg.AssetMaterialization]:
    """{class: the latest materialization of its partition}."""
    found: dict[str, dg.AssetMaterialization] = {}
    for record in instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records:  # newest first
        found.setdefault(class_name(record.partition_key), record.asset_materialization)
    return found


def per_class(instance, asset: str, name: str) -> dict[str, int]:
    """{class: metadata[name]} from the latest materialization of each of the asset's partitions."""
    return {label: event.metadata[name].value for label, event in partition_events(instance, asset).items()}
