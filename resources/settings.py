"""Resources that carry the pipeline's settings; their values come from one place, `resources.build_resources`."""


import dagster as dg

from fruit_assets.images import DEFAULT_MAX_IMAGE_PIXELS


class ImageSource(dg.ConfigurableResource):
    """Where the photos are: a local folder or s3:// URI laid out as <root>/<Split>/<Class name>/<file>."""

    root: str
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


class MobileNetSettings(dg.ConfigurableResource):
    """Which weights and which engine embed the images."""

    weights: str | None = None  # local path or s3:// URI; None = Keras's own ImageNet download (needs internet)
    engine: str = "onnx"  # "onnx" (ONNX Runtime, converted from the Keras model) or "tensorflow"
    cache_dir: str = "~/.cache/fruit_assets"  # converted models, keyed by the weights' sha256
    threads_per_task: int = 1  # engine threads per Spark task: Spark's task slots already use every core
    arrow_batch_size: int = 64  # images per Arrow batch handed to the pandas UDF


class PcaSettings(dg.ConfigurableResource):
    k: int = 50


class LakeSettings(dg.ConfigurableResource):
    """The lake root, for the side tables an asset writes next to its main output (errors, variance, model info)."""

    root: str
