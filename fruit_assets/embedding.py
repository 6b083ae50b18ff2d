"""MobileNetV2 embeddings as a Spark pandas UDF.

The engine artifact (ONNX model or Keras weights) is broadcast once per job; each Python worker builds its model
once (`engines.load_embedder` caches it per process, and Spark reuses workers), then decodes every Arrow batch into
one preallocated float32 array and embeds it in a single call. Images that cannot be decoded come out with a null
vector and a reason, never dropped.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.sql import Column
from pyspark.sql import functions as F

from fruit_assets.images import INPUT_SIZE, ImageDecodeError, decode_into

EMBEDDED_SCHEMA = "features array<float>, error string"


def embed_column(content: Column, artifact: Broadcast, threads: int, max_pixels: int) -> Column:
    """A struct column (features, error) computed from the image bytes in `content`."""

    @F.pandas_udf(EMBEDDED_SCHEMA)
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from fruit_assets.engines import load_embedder

        run = load_embedder(artifact.value, threads=threads)
        buffer = np.empty((0, *INPUT_SIZE, 3), dtype=np.float32)
        for images in batches:
            if len(buffer) < len(images):
                buffer = np.empty((len(images), *INPUT_SIZE, 3), dtype=np.float32)
            decoded, errors = [], [None] * len(images)
            for i, data in enumerate(images):
                try:
                    decode_into(data, buffer[len(decoded)], max_pixels)
                    decoded.append(i)
                except ImageDecodeError as exc:
                    errors[i] = exc.reason
                except Exception as exc:  # one odd file must not fail the whole batch
                    errors[i] = f"unexpected decoding failure: {type(exc).__name__}: {exc}"
            features = [None] * len(images)
            if decoded:
                vectors = run(buffer[: len(decoded)])
                for row, i in enumerate(decoded):
                    features[i] = vectors[row]
            yield pd.DataFrame({"features": features, "error": errors})

    return embed(content)
