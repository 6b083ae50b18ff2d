"""Resources that carry the pipeline's settings; their values come from one place, `resources.build_resources`.

Each validates its values when built (paths and URIs through fruit_assets.preflight / fruit_assets.lake), so a bad
setting fails when the code location loads or the CLI starts, with a message naming the setting, not deep inside a
Spark job. Errors never echo the value itself (a URI could carry a secret).
"""


from typing import Annotated, Optional

import dagster as dg
from pydantic import AfterValidator, ConfigDict, ValidationInfo, field_validator

from fruit_assets.images import DEFAULT_MAX_IMAGE_PIXELS
from fruit_assets.lake import validate_root
from fruit_assets.preflight import check_cache_dir, check_engine, check_images_root, check_k, check_weights_location

_HIDE_INPUT = ConfigDict(hide_input_in_errors=True)

# The FRUITS_* variable behind each count setting (read in resources/__init__.py), so an error names the one to fix.
_COUNT_VARIABLES = {
    "max_image_pixels": "FRUITS_MAX_IMAGE_PIXELS",
    "threads_per_task": "FRUITS_ENGINE_THREADS",
    "arrow_batch_size": "FRUITS_ARROW_BATCH",
    "engine_batch_size": "FRUITS_ENGINE_BATCH",
}


def _at_least_one(value: int, info: ValidationInfo) -> int:
    if value < 1:
        raise ValueError(f"{_COUNT_VARIABLES[info.field_name]} must be at least 1, not {value}")
    return value


Count = Annotated[int, AfterValidator(_at_least_one)]


class ImageSource(dg.ConfigurableResource):
    """Where the photos are: a local folder or s3:// URI laid out as <root>/<Split>/<Class name>/<file>."""

    model_config = _HIDE_INPUT

    root: str
    max_image_pixels: Count = DEFAULT_MAX_IMAGE_PIXELS

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        return check_images_root(value)


class MobileNetSettings(dg.ConfigurableResource):
    """Which weights and which engine embed the images."""

    model_config = _HIDE_INPUT

    weights: str | None = None  # local path or s3:// URI; None = Keras's own ImageNet download (needs internet)
    engine: str = "onnx"  # "onnx" (ONNX Runtime, converted from the Keras model) or "tensorflow"
    cache_dir: str = "~/.cache/fruit_assets"  # converted models, keyed by the weights' sha256
    threads_per_task: Count = 1  # engine threads per Spark task: Spark's task slots already use every core
    arrow_batch_size: Count = 64  # images per Arrow batch handed to the pandas UDF
    engine_batch_size: Optional[Count] = None  # images per engine call; None = engines.FASTEST_BATCH

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: str | None) -> str | None:
        return check_weights_location(value)

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        return check_engine(value)

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, value: str) -> str:
        return check_cache_dir(value)


class PcaSettings(dg.ConfigurableResource):
    k: int = 50

    @field_validator("k")
    @classmethod
    def _k(cls, value: int) -> int:
        return check_k(value)


class LakeSettings(dg.ConfigurableResource):
    """The lake root, for the side tables an asset writes next to its main output (errors, variance, model info)."""

    model_config = _HIDE_INPUT

    root: str

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        return validate_root(value)
