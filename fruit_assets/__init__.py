"""Fruits-360 images -> MobileNetV2 embeddings -> PCA, as a Dagster asset graph on Spark."""
