"""New class folders become partitions without a code change."""

import dagster as dg

from fruit_assets.layout import discover
from fruit_assets.partitions import fruit_class_partitions, partition_key
from resources.settings import ImageSource


def register_classes(instance: dg.DagsterInstance, class_names: list[str]) -> list[str]:
    """Adds partitions for classes not yet known, in sorted order; returns the new keys."""
    known = set(instance.get_dynamic_partitions(fruit_class_partitions.name))
    new = [k for k in (partition_key(c) for c in sorted(class_names)) if k not in known]
    if new:
        instance.add_dynamic_partitions(fruit_class_partitions.name, new)
    return new


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Scans the images root and adds a fruit_class partition for each new class folder.",
)
def new_fruit_classes(context: dg.SensorEvaluationContext, images: ImageSource):
    found = discover(images.root)
    known = set(context.instance.get_dynamic_partitions(fruit_class_partitions.name))
    new = sorted(partition_key(c) for c in found.class_names if partition_key(c) not in known)
    if found.outside_classes:
        context.log.warning(found.outside_message())
    if not new:
        return dg.SkipReason(
            f"{len(found.classes)} classes, none new; empty folders: {found.empty_classes}"
            + (f"; {len(found.outside_classes)} image file(s) outside class folders" if found.outside_classes else "")
        )
    return dg.SensorResult(dynamic_partitions_requests=[fruit_class_partitions.build_add_request(new)])
