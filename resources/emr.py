"""FRUITS_DEPLOYMENT=emr: the same assets, their Spark work sent to an existing EMR cluster as EMR steps.

What changes against the local deployment (and nothing else does; the assets never ask which one they run in):
- `step_launcher`: dagster-aws's EMR PySpark step launcher (a small subclass, below). Every asset and asset check
  requires this resource key, so Dagster hands each of those steps to the launcher: it stages the code package, the
  pickled step and the step's settings to S3, adds a `spark-submit` step to the cluster (Spark on YARN), polls the
  step, and replays the events the step wrote back to S3 into this run.
- `pyspark`: a PySparkResource that only starts Spark when first used, i.e. inside the EMR step (the Dagster process
  only launches steps); the Spark settings travel as `--conf` on the step's spark-submit command.
- the lake: `FRUITS_LAKE_ROOT`, by default `s3://<FRUITS_STAGING_BUCKET>/lake`, behind the same SparkLakeIOManager.

Settings (environment, as the `fruits` CLI sets them; see docs/aws.md):
  EMR_CLUSTER_ID          the cluster (j-...), e.g. the CloudFormation stack's ClusterId output   (required)
  FRUITS_STAGING_BUCKET   bucket for the launcher's staged files, e.g. the stack's LakeBucketName (required)
  FRUITS_STAGING_PREFIX   key prefix under it (default emr-staging, which the bucket's lifecycle rule expires)
  FRUITS_AWS_REGION       the cluster's region (default eu-west-1)
  FRUITS_ALLOWED_REGIONS  comma-separated regions data may live in (default: the EU regions of fruit_assets.infra)
  FRUITS_EMR_POLL_SECONDS how often the launcher asks EMR about a step (default 15; AWS throttles DescribeStep)
  FRUITS_EMR_WAIT_FOR_LOGS "true" to copy the step's stdout/stderr from the cluster's S3 LogUri into the run
                          (EMR pushes logs every ~5 minutes, so this adds minutes per step; default false)

Code deployment: `deploy_local_job_package=True`, i.e. before every step the launcher zips this project's packages
and passes the zip to spark-submit's --py-files. Not `s3_job_package_path`: dagster issue #3679 (the launcher ignores
it for the code it runs) and a package installed once at bootstrap would go stale with every code change. The
cluster's bootstrap (infra/bootstrap.sh) still installs the fruit_assets wheel, for its pinned dependencies.

Why a subclass of dagster-aws's EmrPySparkStepLauncher, and what it adds (each override is small and documented):
- data residency: before the first step of a run stages or launches anything, the cluster's region and the region of
  every bucket the run touches must be in FRUITS_ALLOWED_REGIONS (DataResidencyError otherwise);
- the step's settings: dagster-aws's launcher has no way to set the step process's environment, and the step process
  rebuilds every resource from `resources.build_resources()`, i.e. from FRUITS_* variables. They are staged as a JSON
  file beside the pickled step and applied by resources/emr_step_main.py (our copy of dagster-aws's step entry point)
  before any project code is imported. Only FRUITS_* and EMR_CLUSTER_ID are staged, never credentials: on EMR the
  step gets AWS access from the cluster's instance profile;
- the Dagster instance facts a step needs: the step runs against an ephemeral instance, where dagster-aws only adds a
  single dynamic partition key. This graph's runs are partition ranges and `labels_present` asks which partitions are
  materialized, so the fruit_class partitions (in order) and the materialized partitions are staged and loaded too;
- EMR metadata: every asset materialization and asset check evaluation that comes back from a step carries the
  cluster id, region, instance types and counts, the EMR step id, the step's duration (EMR's own timeline) and an
  estimated cost in EUR (fruit_assets.infra.estimate_cost_eur). The launcher holds those events back until EMR reports
  the step finished, then adds the metadata before writing them to the run's event log (Dagster metadata on the
  materialization itself, not a separate observation);
- a step that EMR itself fails (spark-submit crashed, node lost) raises an EmrError that says why (EMR's failure
  details and state-change reason, and the traceback emr_step_main.py leaves when the failure happened outside
  Dagster's step execution, e.g. unpickling the step with another Dagster version), after replaying whatever events
  the step had written;
- the code package holds exactly this project's packages (dagster-pyspark's zipper would take in `.venv`, the lake
  and the Dagster home, as its `/venv/` exclusion does not match `.venv`);
- the poll interval is configurable (dagster-aws hard-codes 15 s).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zipfile
from datetime import timezone
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
from botocore.exceptions import ClientError
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.external_step import (
    PICKLED_STEP_RUN_REF_FILE_NAME,
    step_context_to_step_run_ref,
)
from dagster_aws.emr import EmrError
from dagster_aws.emr.pyspark_step_launcher import CODE_ZIP_NAME, EmrPySparkStepLauncher, emr_pyspark_step_launcher
from dagster_pyspark import PySparkResource
from dagster_pyspark.resources import spark_session_from_config

from fruit_assets import infra
from resources.io_managers import SparkLakeIOManager
from resources.settings import LakeSettings

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
# What the step needs of this project: the packages pyproject.toml installs ([tool.setuptools.packages.find]).
JOB_PACKAGES = ("fruit_assets", "resources", "jobs")
STEP_MAIN = Path(__file__).resolve().parent / "emr_step_main.py"
STEP_CONTEXT_FILE = "fruits_step_context.json"  # staged beside step_run_ref.pkl; read by emr_step_main.py
STEP_ERROR_FILE = "step_error.txt"  # left by emr_step_main.py when the step fails outside Dagster's step execution
STEP_ENV_KEYS = ("EMR_CLUSTER_ID",)  # plus every FRUITS_* variable
DEFAULT_STAGING_PREFIX = "emr-staging"  # the prefix infra/fruits_emr.yaml's lifecycle rule expires
TERMINATED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
SSE = infra.SSE

# Spark settings for the steps, passed as --conf to spark-submit. The launcher requires spark.master=yarn.
# The workload settings of LOCAL_SPARK_CONFIG, except the master, the short-lived-JVM flags, the listing of folders
# on the driver (S3 listings gain from Spark's parallel listing), the driver memory (m5.xlarge: 16 GiB) and twice
# the shuffle partitions (2 core nodes of 4 vCPUs). Spark on YARN honours spark.task.maxFailures without local[*, F].
EMR_SPARK_CONFIG = {
    "spark.master": "yarn",
    "spark.submit.deployMode": "client",
    "spark.driver.memory": "4g",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.shuffle.partitions": "16",
    "spark.sql.files.openCostInBytes": "131072",
    "spark.python.worker.reuse": "true",
    "spark.task.maxFailures": "4",
    "spark.sql.parquet.compression.codec": "snappy",
}


class EmrSettingsError(ValueError):
    """The emr deployment is missing a setting or has one it cannot work with."""


class ClusterNotUsableError(RuntimeError):
    """The EMR cluster cannot take steps (terminated, e.g. by its idle auto-termination)."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def allowed_regions() -> tuple[str, ...]:
    raw = _env("FRUITS_ALLOWED_REGIONS")
    regions = tuple(r.strip() for r in raw.split(",") if r.strip()) if raw else infra.EU_REGIONS
    if not regions:
        raise EmrSettingsError("FRUITS_ALLOWED_REGIONS is set but names no region.")
    return regions


def s3_bucket(uri: str | None) -> str | None:
    if uri and uri.startswith(("s3://", "s3a://")):
        return uri.split("://", 1)[1].split("/", 1)[0]
    return None


# ---------------------------------------------------------------------------------------------
# Data residency


def check_data_residency(
    region: str, cluster_id: str, buckets: dict[str, str], allowed: tuple[str, ...] | list[str]
) -> dict[str, Any]:
    """Refuse (DataResidencyError) unless the cluster and every bucket are in an allowed region; return the cluster.

    The cluster's region is checked twice: the region its API is called in (an EMR cluster id is only visible in its
    own region) and the region in the ARN EMR returns for it. Bucket regions are asked from S3, not assumed.
    """
    infra.assert_eu_region(region, "FRUITS_AWS_REGION (where the EMR cluster is called)", allowed)
    emr = boto3.client("emr", region_name=region)
    try:
        cluster = infra.cluster_description(emr, cluster_id)
    except ClientError as e:
        raise EmrSettingsError(
            f"EMR cluster {cluster_id!r} not found in {region} ({e.response['Error'].get('Message', e)}); "
            "check EMR_CLUSTER_ID and FRUITS_AWS_REGION (a new stack means a new cluster id)."
        ) from e
    arn_region = (cluster.get("cluster_arn") or "").split(":")[3:4] or [region]
    infra.assert_eu_region(arn_region[0], f"EMR cluster {cluster_id} ({cluster.get('cluster_arn')})", allowed)
    if cluster["state"] in TERMINATED_STATES:
        raise ClusterNotUsableError(
            f"EMR cluster {cluster_id} is {cluster['state']} (idle auto-termination?); "
            "replace it with `fruits aws deploy --recreate-cluster` and set EMR_CLUSTER_ID to the new id."
        )
    s3 = boto3.client("s3", region_name=region)
    for what, bucket in buckets.items():
        try:
            where = infra.bucket_region(s3, bucket)
        except ClientError as e:
            raise EmrSettingsError(f"{what}: cannot read the region of s3://{bucket}: {e}") from e
        infra.assert_eu_region(where, f"{what} s3://{bucket}", allowed)
    return cluster


# ---------------------------------------------------------------------------------------------
# The step launcher


def build_job_package(zip_path: str | os.PathLike[str], project_dir: str | os.PathLike[str] = PROJECT_DIR) -> list[str]:
    """Zip this project's packages for --py-files (sources only); returns the archived names."""
    root = Path(project_dir)
    names = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in JOB_PACKAGES:
            for path in sorted((root / package).rglob("*")):
                rel = path.relative_to(root)
                if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in (".pyc", ".pyo"):
                    zf.write(path, rel.as_posix())
                    names.append(rel.as_posix())
    if not any(n.endswith("definitions.py") for n in names):
        raise EmrSettingsError(f"no fruit_assets/definitions.py under {root}: not the fruit_assets project")
    return names


def _instance_facts(step_context) -> dict[str, Any]:
    """The fruit_class partitions (ordered) and the materialized partitions of the job's partitioned assets."""
    instance = step_context.instance
    graph = step_context.job_def.asset_layer.asset_graph
    dynamic: dict[str, list[str]] = {}
    materialized: list[dict[str, Any]] = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        partitions_def = graph.get(key).partitions_def
        if partitions_def is None:
            continue
        if isinstance(partitions_def, dg.DynamicPartitionsDefinition) and partitions_def.name:
            dynamic.setdefault(partitions_def.name, instance.get_dynamic_partitions(partitions_def.name))
        materialized.append({"asset_key": list(key.path), "partitions": sorted(instance.get_materialized_partitions(key))})
    return {"dynamic_partitions": dynamic, "materialized_partitions": materialized}


def _seconds(timeline: dict[str, Any]) -> float | None:
    start, end = timeline.get("StartDateTime"), timeline.get("EndDateTime")
    if not start or not end:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    if end.tzinfo is None:
        end = end.replace(tzinfo=timezone.utc)
    return max(0.0, (end - start).total_seconds())


class FruitsEmrPySparkStepLauncher(EmrPySparkStepLauncher):
    """dagster-aws's EMR PySpark step launcher, plus residency guard, step settings, instance facts and metadata."""

    def __init__(
        self,
        *,
        allowed_regions: tuple[str, ...] | list[str],
        poll_seconds: float,
        step_env: dict[str, str],
        buckets: dict[str, str],
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.allowed_regions = tuple(allowed_regions)
        self.poll_seconds = float(poll_seconds)
        self.step_env = dict(step_env)
        self.buckets = dict(buckets)
        self._residency_checked = False
        self._launched_at: dict[str, float] = {}

    # -- before anything is staged ------------------------------------------------------------

    def ensure_data_residency(self) -> None:
        if not self._residency_checked:  # once per run: the launcher resource lives as long as the run
            check_data_residency(self.region_name, self.cluster_id, self.buckets, self.allowed_regions)
            self._residency_checked = True

    def launch_step(self, step_context):
        self.ensure_data_residency()  # raises before anything is uploaded or added to the cluster
        step_run_ref = step_context_to_step_run_ref(step_context, self.local_job_package_path)
        run_id = step_context.dagster_run.run_id
        step_key = step_run_ref.step_key
        self._stage(step_context, step_run_ref, run_id, step_key)
        emr_step_def = self._get_emr_step_def(run_id, step_key, step_context.op.name)
        emr_step_id = self.emr_job_runner.add_job_flow_steps(step_context.log, self.cluster_id, [emr_step_def])[0]
        self._launched_at[emr_step_id] = time.monotonic()
        step_context.log.info(f"EMR step {emr_step_id} added to cluster {self.cluster_id} for {step_key}")
        yield from self.wait_for_completion_and_log(run_id, step_key, emr_step_id, step_context)

    def _stage(self, step_context, step_run_ref, run_id: str, step_key: str) -> None:
        """Upload what the step needs next to each other: entry point, code, pickled step, settings and facts."""
        import pickle

        s3 = boto3.client("s3", region_name=self.region_name)

        def put(local_path: str, name: str) -> None:
            key = self._artifact_s3_key(run_id, step_key, name)
            step_context.log.debug(f"Uploading {local_path} to s3://{self.staging_bucket}/{key}")
            s3.upload_file(local_path, self.staging_bucket, key, ExtraArgs={"ServerSideEncryption": SSE})

        with tempfile.TemporaryDirectory() as tmp:
            put(str(STEP_MAIN), self._main_file_name())
            if self.deploy_local_job_package:
                build_job_package(os.path.join(tmp, CODE_ZIP_NAME), self.local_job_package_path)
                put(os.path.join(tmp, CODE_ZIP_NAME), CODE_ZIP_NAME)
            ref_path = os.path.join(tmp, PICKLED_STEP_RUN_REF_FILE_NAME)
            with open(ref_path, "wb") as f:
                pickle.dump(step_run_ref, f)
            put(ref_path, PICKLED_STEP_RUN_REF_FILE_NAME)
            context_path = os.path.join(tmp, STEP_CONTEXT_FILE)
            with open(context_path, "w") as f:
                json.dump({"env": self.step_env, **_instance_facts(step_context)}, f)
            put(context_path, STEP_CONTEXT_FILE)

    def _main_file_local_path(self) -> str:
        return str(STEP_MAIN)

    # -- while and after the step runs --------------------------------------------------------

    def wait_for_completion(self, step_context, s3, run_id, step_key, emr_step_id, check_interval=None):
        """dagster-aws's polling loop, with a configurable interval and EMR metadata on the step's asset events.

        Materializations and check evaluations (and whatever follows them) are held until EMR reports the step
        finished, so their metadata can say how long it ran and what that cost.
        """
        seen = 0
        held: list[EventLogEntry] = []
        done = False
        try:
            while not done:
                with raise_execution_interrupts():
                    time.sleep(check_interval or self.poll_seconds)
                    done = self.emr_job_runner.is_emr_step_complete(step_context.log, self.cluster_id, emr_step_id)
                    events = self.read_events(s3, run_id, step_key)
                for entry in events[seen:]:
                    if held or _is_asset_event(entry):
                        held.append(entry)
                    else:
                        yield from _forward(step_context, entry)
                seen = len(events)
        except EmrError as error:
            # EMR failed the step (spark-submit crashed, node lost, cancelled): replay what the step had written,
            # then fail with EMR's own words and the step's traceback instead of dagster-aws's bare "EMR step ...
            # failed".
            report = self._step_report(emr_step_id)
            for entry in held + list(self.read_events(s3, run_id, step_key))[seen:]:
                yield from _forward(step_context, _with_metadata(entry, report["metadata"]))
            step_error = self._step_error(s3, run_id, step_key)
            raise EmrError(
                f"{error}: {report['failure']}" + (f"\nThe step's own error:\n{step_error}" if step_error else "")
            ) from error
        report = self._step_report(emr_step_id)
        step_context.log.info(
            f"EMR step {emr_step_id} on {self.cluster_id}: {report['seconds']:.1f} s, "
            f"estimated cost {report['metadata']['emr/estimated_cost_eur'].value} EUR"
        )
        for entry in held:
            yield from _forward(step_context, _with_metadata(entry, report["metadata"]))

    def _step_error(self, s3, run_id: str, step_key: str) -> str | None:
        """The traceback emr_step_main.py leaves when the step fails outside Dagster's step execution."""
        try:
            body = s3.Object(self.staging_bucket, self._artifact_s3_key(run_id, step_key, STEP_ERROR_FILE)).get()["Body"]
        except ClientError:
            return None
        return body.read().decode("utf-8", errors="replace")

    def _step_report(self, emr_step_id: str) -> dict[str, Any]:
        emr = self.emr_job_runner.make_emr_client()
        status = emr.describe_step(ClusterId=self.cluster_id, StepId=emr_step_id)["Step"]["Status"]
        measured = _seconds(status.get("Timeline", {}))
        seconds = measured if measured is not None else time.monotonic() - self._launched_at.get(emr_step_id, time.monotonic())
        cluster = infra.cluster_description(emr, self.cluster_id)
        try:
            cost: Any = round(infra.estimate_cost_eur(cluster["instances"], seconds), 4)
        except infra.UnknownInstanceTypeError as e:
            cost = f"unknown: {e}"
        metadata = {
            "emr/cluster_id": dg.MetadataValue.text(self.cluster_id),
            "emr/region": dg.MetadataValue.text(self.region_name),
            "emr/instances": dg.MetadataValue.json(cluster["instances"]),
            "emr/instance_groups": dg.MetadataValue.json(cluster["instance_groups"]),
            "emr/step_id": dg.MetadataValue.text(emr_step_id),
            "emr/step_seconds": dg.MetadataValue.float(round(seconds, 1)),
            "emr/step_seconds_source": dg.MetadataValue.text(
                "EMR step timeline" if measured is not None else "launcher wall clock (EMR gave no timeline)"
            ),
            "emr/estimated_cost_eur": dg.MetadataValue.float(cost) if isinstance(cost, float) else dg.MetadataValue.text(cost),
            "emr/cost_basis": dg.MetadataValue.text(
                "whole cluster for the step's duration (min 60 s), on-demand EC2 + EMR list prices, eu-west-1, "
                f"{infra.EUR_PER_USD} EUR/USD; excludes idle time, EBS, S3 and transfer (fruit_assets/infra.py)"
            ),
        }
        details = status.get("FailureDetails") or {}
        failure = "; ".join(
            part
            for part in (
                details.get("Reason"),
                details.get("Message"),
                (status.get("StateChangeReason") or {}).get("Message"),
                f"log: {details['LogFile']}" if details.get("LogFile") else None,
            )
            if part
        ) or "EMR gave no reason; see the step's stderr under the cluster's LogUri (emr-logs/)"
        return {"seconds": seconds, "metadata": metadata, "failure": failure}


def _is_asset_event(entry: EventLogEntry) -> bool:
    event = entry.dagster_event
    return event is not None and event.event_type in (
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_CHECK_EVALUATION,
    )


def _with_metadata(entry: EventLogEntry, metadata: dict[str, Any]) -> EventLogEntry:
    event = entry.dagster_event
    if event is None:
        return entry
    data = event.event_specific_data
    if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
        data = data._replace(materialization=data.materialization.with_metadata({**data.materialization.metadata, **metadata}))
    elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
        data = data.with_metadata({**data.metadata, **metadata})
    else:
        return entry
    return entry._replace(dagster_event=event._replace(event_specific_data=data))


def _forward(step_context, entry: EventLogEntry):
    """What dagster-aws does with each event from the step: store it in this run, and hand it to the executor."""
    step_context.instance.handle_new_event(entry)
    if entry.is_dagster_event:
        yield entry.get_dagster_event()


LAUNCHER_FIELDS = (  # dagster-aws's own config fields, as its emr_pyspark_step_launcher declares them
    "spark_config",
    "cluster_id",
    "region_name",
    "action_on_failure",
    "staging_bucket",
    "staging_prefix",
    "wait_for_logs",
    "local_job_package_path",
    "deploy_local_job_package",
)


@dg.resource(
    config_schema={
        **{name: emr_pyspark_step_launcher.config_schema.config_type.fields[name] for name in LAUNCHER_FIELDS},
        "allowed_regions": dg.Field([str], description="Regions the cluster and every bucket must be in."),
        "poll_seconds": dg.Field(float, default_value=15.0, description="Seconds between DescribeStep calls."),
        "step_env": dg.Field(dg.Map(str, str), description="FRUITS_* settings applied in the step process."),
        "buckets": dg.Field(dg.Map(str, str), description="Buckets the run touches, checked for residency."),
    },
    description="dagster-aws's EMR PySpark step launcher with residency guard, step settings and EMR metadata.",
)
def fruits_emr_step_launcher(context: dg.InitResourceContext) -> FruitsEmrPySparkStepLauncher:
    config = context.resource_config
    return FruitsEmrPySparkStepLauncher(
        **{name: config[name] for name in LAUNCHER_FIELDS if name in config},
        allowed_regions=config["allowed_regions"],
        poll_seconds=config["poll_seconds"],
        step_env=config["step_env"],
        buckets=config["buckets"],
    )


class StepPySparkResource(PySparkResource):
    """A PySparkResource that starts Spark on first use.

    The Dagster process only launches steps and must not start a JVM; inside the EMR step the session is the one
    spark-submit configured (master yarn, the --conf settings above), so spark_config is usually empty.
    """

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        pass

    @property
    def spark_session(self) -> Any:
        if self._spark_session is None:
            self._spark_session = spark_session_from_config(self.spark_config)
        return self._spark_session


# ---------------------------------------------------------------------------------------------
# The deployment


def step_environment(settings: dict, launcher: dict[str, str]) -> dict[str, str]:
    """The FRUITS_* settings the step process rebuilds its resources from: the values resolved here, not defaults
    resolved again on the cluster (whose home, shared folder and engine default differ)."""
    images, mobilenet = settings["images"], settings["mobilenet"]
    step_env = {
        "FRUITS_DEPLOYMENT": "emr",
        **launcher,
        "FRUITS_IMAGES_ROOT": images.root,
        "FRUITS_MAX_IMAGE_PIXELS": str(images.max_image_pixels),
        "FRUITS_LAKE_ROOT": settings["lake_settings"].root,
        "FRUITS_ENGINE": mobilenet.engine,
        "FRUITS_ENGINE_THREADS": str(mobilenet.threads_per_task),
        "FRUITS_ARROW_BATCH": str(mobilenet.arrow_batch_size),
        "FRUITS_PCA_K": str(settings["pca"].k),
    }
    if mobilenet.engine_batch_size:
        step_env["FRUITS_ENGINE_BATCH"] = str(mobilenet.engine_batch_size)
    if mobilenet.weights:
        step_env["FRUITS_MOBILENET_WEIGHTS"] = mobilenet.weights
    if _env("FRUITS_CACHE_DIR"):  # the default (~/.cache/fruit_assets) is resolved on the cluster, not here
        step_env["FRUITS_CACHE_DIR"] = _env("FRUITS_CACHE_DIR")
    bad = sorted(k for k in step_env if not (k.startswith("FRUITS_") or k in STEP_ENV_KEYS))
    if bad:
        raise EmrSettingsError(f"refusing to stage non-FRUITS variables for the EMR step: {bad}")
    return step_env


def emr_resources(settings: dict) -> dict:
    """Resources for FRUITS_DEPLOYMENT=emr, from the settings every deployment shares plus the EMR_*/FRUITS_* above."""
    cluster_id = _env("EMR_CLUSTER_ID")
    staging_bucket = _env("FRUITS_STAGING_BUCKET")
    missing = [name for name, value in (("EMR_CLUSTER_ID", cluster_id), ("FRUITS_STAGING_BUCKET", staging_bucket)) if not value]
    if missing:
        raise EmrSettingsError(
            f"FRUITS_DEPLOYMENT=emr needs {' and '.join(missing)} (the ClusterId and LakeBucketName outputs of "
            "`fruits aws deploy`); see docs/aws.md."
        )
    region = _env("FRUITS_AWS_REGION", infra.DEFAULT_REGION)
    staging_prefix = _env("FRUITS_STAGING_PREFIX", DEFAULT_STAGING_PREFIX).strip("/")
    allowed = allowed_regions()

    lake_root = _env("FRUITS_LAKE_ROOT") or f"s3://{staging_bucket}/lake"
    settings = {**settings, "lake_settings": LakeSettings(root=lake_root)}
    for what, uri in (("FRUITS_LAKE_ROOT", lake_root), ("FRUITS_IMAGES_ROOT", settings["images"].root)):
        if not s3_bucket(uri):
            log.warning(
                "%s=%s is not on S3: the EMR step reads it on the cluster's own disks, which is only right when "
                "driver and executors share one filesystem (a single-node cluster, or the loopback emulation).",
                what, uri,
            )

    buckets = {"staging bucket (FRUITS_STAGING_BUCKET)": staging_bucket}
    for what, uri in (
        ("lake bucket (FRUITS_LAKE_ROOT)", lake_root),
        ("images bucket (FRUITS_IMAGES_ROOT)", settings["images"].root),
        ("weights bucket (FRUITS_MOBILENET_WEIGHTS)", settings["mobilenet"].weights),
    ):
        if s3_bucket(uri):
            buckets[what] = s3_bucket(uri)

    launcher_env = {
        "EMR_CLUSTER_ID": cluster_id,
        "FRUITS_AWS_REGION": region,
        "FRUITS_STAGING_BUCKET": staging_bucket,
        "FRUITS_STAGING_PREFIX": staging_prefix,
        "FRUITS_ALLOWED_REGIONS": ",".join(allowed),
        "FRUITS_EMR_POLL_SECONDS": _env("FRUITS_EMR_POLL_SECONDS", "15"),
        "FRUITS_EMR_WAIT_FOR_LOGS": _env("FRUITS_EMR_WAIT_FOR_LOGS", "false"),
    }
    launcher = fruits_emr_step_launcher.configured(
        {
            "cluster_id": cluster_id,
            "region_name": region,
            "staging_bucket": staging_bucket,
            "staging_prefix": staging_prefix,
            "local_job_package_path": str(PROJECT_DIR),
            # Zip and ship this project with every step (--py-files), see the module docstring (dagster #3679).
            "deploy_local_job_package": True,
            "wait_for_logs": launcher_env["FRUITS_EMR_WAIT_FOR_LOGS"].lower() in ("1", "true", "yes"),
            # CONTINUE, not dagster-aws's CANCEL_AND_WAIT: a failed step must not cancel other runs' queued steps.
            "action_on_failure": "CONTINUE",
            "spark_config": EMR_SPARK_CONFIG,
            "allowed_regions": list(allowed),
            "poll_seconds": float(launcher_env["FRUITS_EMR_POLL_SECONDS"]),
            "step_env": step_environment(settings, launcher_env),
            "buckets": buckets,
        }
    )
    pyspark = StepPySparkResource(spark_config={})
    return {
        **settings,
        "pyspark": pyspark,
        "lake_io_manager": SparkLakeIOManager(lake=settings["lake_settings"], pyspark=pyspark),
        "step_launcher": launcher,
    }
