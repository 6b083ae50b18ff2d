"""Small builders for the metadata Dagster shows next to each materialization."""

from __future__ import annotations

import base64
import io

import dagster as dg


def count_table(counts: dict[str, int], key: str = "class", value: str = "images") -> dg.MetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn(value, "int")])
    records = [dg.TableRecord({key: k, value: int(v)}) for k, v in sorted(counts.items())]
    return dg.MetadataValue.table(records=records, schema=schema)


def png_markdown(figure, alt: str) -> dg.MetadataValue:
    """A matplotlib figure inlined as a PNG in Markdown, which the Dagster UI renders as an image."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")
