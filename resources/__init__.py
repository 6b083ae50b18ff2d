"""Resources for the whole graph, chosen per deployment in this one place.

FRUITS_DEPLOYMENT=local (default): embedded Spark (local[*]), a local lake folder, no step launcher.
FRUITS_DEPLOYMENT=emr: the same assets, with their Spark work sent to an EMR cluster by dagster-aws's
PySpark step launcher and the lake on S3 (see resources/emr.py).
Settings come from FRUITS_* environment variables (the `fruits` CLI sets them from its flags).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import dagster as dg
from dagster_pyspark import PySparkResource

from resources.io_managers import SparkLakeIOManager
from resources.settings import ImageSource, LakeSettings, MobileNetSettings, PcaSettings

PROJECT_DIR = Path(__file__).resolve().parent.parent
SHARED_DIR = PROJECT_DIR.parent / "shared"
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"

# In-process PySpark starts its Python workers with $PYSPARK_PYTHON (else `python3` from PATH, which may lack the
# project's packages): default it to the interpreter running Dagster, the project's venv.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _utf8_locale_for_the_jvm() -> None:
    """Java on Linux names files in the locale's charset: under LC_ALL=C (cron, bare containers) Spark cannot open a
    class folder named `Pêche`, while Python (in UTF-8 mode there) lists it fine. Give the JVM we start the charset
    Python uses, UTF-8; only the character type changes (LC_ALL only when it is set, as it overrides LC_CTYPE)."""
    current = os.environ.get("LC_ALL") or os.environ.get("LC_CTYPE") or os.environ.get("LANG") or ""
    utf8 = any(tag in current.lower() for tag in ("utf-8", "utf8"))
    if sys.platform.startswith("linux") and sys.getfilesystemencoding() == "utf-8" and not utf8:
        os.environ["LC_ALL" if os.environ.get("LC_ALL") else "LC_CTYPE"] = "C.UTF-8"


_utf8_locale_for_the_jvm()

# Spark settings that matter for this workload; see README "Performance".
LOCAL_SPARK_CONFIG = {
    # local[N, F]: in local mode Spark ignores spark.task.maxFailures and fails a job on a task's first failure
    # unless F is given in the master URL; with 4, a crashed Python worker or a flaky read is retried as on a cluster.
    "spark.master": "local[*, 4]",
    "spark.app.name": "fruit_assets",
    "spark.driver.memory": "2g",
    # A short-lived local JVM spends more CPU compiling than running: C1 only and the throughput collector cut its
    # CPU time for the whole graph from ~106 to ~78 s, and the wall from ~141 to ~131 s on 2 cores (`make bench`).
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseParallelGC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    # List folders on the driver: above 32 paths (one per class here) Spark lists them in a Spark job of its own,
    # ~0.4 s each and ten per run on the same 2 cores. A 1,000-image run: 47.7-48.9 s with this, 50.9 s without.
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000",
    "spark.sql.shuffle.partitions": "8",
    # Fruit photos are small files: Spark's default 4 MB "cost" per file would cut 17k images into 500+ tiny tasks.
    "spark.sql.files.openCostInBytes": "131072",
    "spark.python.worker.reuse": "true",
    "spark.task.maxFailures": "4",
    "spark.sql.parquet.compression.codec": "snappy",
}


# Every op whose work needs Spark (each asset and asset check) requires this resource key: local = None (the
# step runs in this process), emr = the EMR step launcher (the step runs as an EMR step). Assets with resource
# parameters declare it as a parameter typed StepLauncherParam (Dagster forbids mixing parameters with
# required_resource_keys); the others list it in required_resource_keys.
STEP_LAUNCHER_KEY = "step_launcher"
StepLauncherParam = dg.ResourceParam[Optional[dg.StepLauncher]]


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def default_images_root() -> str:
    shared = SHARED_DIR / "data" / "fruits-360"
    return str(shared if shared.exists() else Path.cwd() / "images")


def default_weights() -> str | None:
    shared = SHARED_DIR / "models" / WEIGHTS_FILE
    return str(shared) if shared.exists() else None


def default_engine() -> str:
    from fruit_assets.engines import default_engine as engine

    return engine()


def settings_resources() -> dict:
    """Where the data is and how to process it: the same for every deployment."""
    lake_root = env("FRUITS_LAKE_ROOT", str(PROJECT_DIR / "lake"))
    return {
        "images": ImageSource(
            root=env("FRUITS_IMAGES_ROOT", default_images_root()),
            max_image_pixels=int(env("FRUITS_MAX_IMAGE_PIXELS", "89478485")),
        ),
        "mobilenet": MobileNetSettings(
            weights=env("FRUITS_MOBILENET_WEIGHTS", default_weights()),
            engine=env("FRUITS_ENGINE") or default_engine(),
            cache_dir=env("FRUITS_CACHE_DIR", str(Path.home() / ".cache" / "fruit_assets")),
            threads_per_task=int(env("FRUITS_ENGINE_THREADS", "1")),
            arrow_batch_size=int(env("FRUITS_ARROW_BATCH", "64")),
            engine_batch_size=int(env("FRUITS_ENGINE_BATCH")) if env("FRUITS_ENGINE_BATCH") else None,
        ),
        "pca": PcaSettings(k=int(env("FRUITS_PCA_K", "50"))),
        "lake_settings": LakeSettings(root=lake_root),
    }


def local_resources() -> dict:
    settings = settings_resources()
    pyspark = PySparkResource(spark_config=LOCAL_SPARK_CONFIG)
    return {
        **settings,
        "pyspark": pyspark,
        "lake_io_manager": SparkLakeIOManager(lake=settings["lake_settings"], pyspark=pyspark),
        STEP_LAUNCHER_KEY: dg.ResourceDefinition.none_resource(description="local: no step launcher"),
    }


def deployment() -> str:
    return env("FRUITS_DEPLOYMENT", "local")


def build_resources(name: str | None = None) -> dict:
    name = name or deployment()
    if name == "local":
        return local_resources()
    if name == "emr":
        from resources.emr import emr_resources

        return emr_resources(settings_resources())
    raise ValueError(f"Unknown FRUITS_DEPLOYMENT {name!r}: use 'local' or 'emr'.")
