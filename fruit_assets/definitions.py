"""The code location Dagster loads (workspace.yaml, `dagster dev`)."""

import dagster as dg

from fruit_assets.assets import ALL_ASSETS
from fruit_assets.checks import ALL_CHECKS
from fruit_assets.sensors import new_fruit_classes
from jobs import ALL_JOBS
from resources import build_resources


def build_definitions() -> dg.Definitions:
    """Definitions with resources read from the environment now (the CLI sets FRUITS_* before each run)."""
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=ALL_CHECKS,
        jobs=ALL_JOBS,
        sensors=[new_fruit_classes],
        resources=build_resources(),
        # One Spark application per run: steps share the driver's session instead of each starting its own.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
