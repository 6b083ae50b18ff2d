"""The emr deployment end to end on loopback: the real step launcher, moto's S3 and EMR, a stand-in cluster.

What is real: `fruits run --deployment emr` and Dagster; dagster-aws's launcher (our subclass) staging code, step and
settings to S3 and adding spark-submit steps to an EMR cluster over HTTP; each step's own command, run by spark-submit
(the stand-in only makes master, paths and spark-submit local, see tests/emr_standin.py); the events coming back
through S3. What is not: AWS (moto on 127.0.0.1), YARN (local[2]), EMRFS (Spark inside the step reads the images and
writes the lake on local disk, as no hadoop-aws jar can be installed here; the weights, the staging and the events go
through S3).

EMR requests reach moto under the regional hostname (AWS_ENDPOINT_URL_EMR + an HTTP proxy to moto, see
tests/aws_server.regional_client), so clusters land in moto's eu-west-1 backend with an eu-west-1 ARN, as on AWS.

One module-scoped materialization (10 EMR steps) feeds most assertions; the failure and residency tests add one
short step, or none.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import uuid
import zipfile
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import pytest
from dagster._serdes import serialize_value

from fruit_assets import infra
from fruit_assets.cli import main
from fruit_assets.engines import sha256_file
from fruit_assets.prune import CLASS_DATASETS
from tests.aws_server import FAKE_ENV, moto_server
from tests.conftest import copy_images
from tests.emr_standin import LOCAL_SPARK_SUBMIT, EmrStandIn
from tests.lake_tables import read
from tests.materializations import latest, per_class

pytestmark = [
    pytest.mark.emr,
    # Every step launcher run says so; dagster-aws's launcher is superseded by Pipes, with no removal planned.
    pytest.mark.filterwarnings("ignore::dagster._utils.warnings.SupersessionWarning"),
    # moto says so for every CloudFormation deploy of the template (see tests/test_infra.py::test_moto_gaps).
    pytest.mark.filterwarnings("ignore:Tried to parse AWS.*BucketPolicy:UserWarning"),
]

REGION = "eu-west-1"
CLASSES = ["Apple Red Yellow 1", "Banana"]  # a name with spaces and a digit, and a plain one
PER_CLASS = 4
K = 3
INSTANCES = {"m5.xlarge": 3}  # 1 primary + 2 core, as the template's defaults
FAKE_SECRETS = [FAKE_ENV["AWS_ACCESS_KEY_ID"], FAKE_ENV["AWS_SECRET_ACCESS_KEY"], FAKE_ENV["AWS_SESSION_TOKEN"]]
ASSETS = ["raw_images", "labelled_images", "mobilenet_features", "image_errors", "pca_model", "pca_features"]
CHECKS = {
    ("labelled_images", "labels_present"),
    ("mobilenet_features", "counts_are_conserved"),
    ("mobilenet_features", "features_are_finite_1280"),
    ("pca_model", "explained_variance_is_valid"),
    ("pca_features", "pca_features_separate_classes"),
}
STEPS_PER_GRAPH = len(ASSETS) - 1 + len(CHECKS)  # mobilenet_features and image_errors are one multi-asset step


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def emr_endpoint(region: str) -> str:
    return f"http://elasticmapreduce.{region}.amazonaws.com"


def create_cluster(region: str = REGION, name: str = "fruits") -> str:
    """An EMR cluster the way the template makes it (instance groups, Spark), through the API."""
    emr = boto3.client("emr", region_name=region, endpoint_url=emr_endpoint(region))
    return emr.run_job_flow(
        Name=f"{name}-{_uid()}",
        ReleaseLabel="emr-7.5.0",
        Applications=[{"Name": "Spark"}],
        Instances={
            "InstanceGroups": [
                {"Name": "Primary", "InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {"Name": "Core", "InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2},
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        Tags=[{"Key": "Project", "Value": "fruits"}],
    )["JobFlowId"]


def create_bucket(region: str = REGION) -> str:
    name = f"fruits-lake-{_uid()}"
    s3 = boto3.client("s3", region_name=region)
    if region == "us-east-1":
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    return name


def cluster_steps(cluster_id: str, region: str = REGION) -> list[dict]:
    emr = boto3.client("emr", region_name=region, endpoint_url=emr_endpoint(region))
    return emr.list_steps(ClusterId=cluster_id)["Steps"]


def staged_keys(bucket: str, prefix: str = "emr-staging/") -> list[str]:
    pages = boto3.client("s3", region_name=REGION).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def fresh_definitions() -> None:
    """Make the next run build its resources from the current environment, as a new `fruits` process would.

    `fruit_assets.definitions` builds its resources when imported, and Dagster keeps the last job definition per
    equal ReconstructableJob (a process-wide lru_cache), so both are dropped.
    """
    from dagster._core.definitions.reconstruct import ReconstructableJob

    sys.modules.pop("fruit_assets.definitions", None)
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()


@pytest.fixture(scope="module")
def aws():
    """moto on loopback; EMR calls go to moto under the eu-west-1 hostname (proxied), S3 calls to 127.0.0.1."""
    with moto_server() as endpoint:
        mp = pytest.MonkeyPatch()
        mp.setenv("AWS_ENDPOINT_URL_EMR", emr_endpoint(REGION))
        mp.setenv("HTTP_PROXY", endpoint)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield endpoint
        mp.undo()


@pytest.fixture(scope="module")
def emr(aws, tmp_path_factory, weights, engine_cache):
    """A lake bucket and a cluster in eu-west-1, the weights on S3, a small images root, the stand-in cluster."""
    base = tmp_path_factory.mktemp("emr")
    bucket = create_bucket()
    boto3.client("s3", region_name=REGION).upload_file(str(weights), bucket, f"models/{weights.name}")
    cluster_id = create_cluster()
    images = copy_images(base / "images", classes=CLASSES, per_class=PER_CLASS)
    home = base / "dagster_home"
    home.mkdir()
    env = {
        "DAGSTER_HOME": str(home),
        "FRUITS_DEPLOYMENT": "emr",
        "EMR_CLUSTER_ID": cluster_id,
        "FRUITS_AWS_REGION": REGION,
        "FRUITS_STAGING_BUCKET": bucket,
        "FRUITS_IMAGES_ROOT": str(images),
        "FRUITS_LAKE_ROOT": f"file://{base / 'lake'}",  # Spark inside the step writes local disk (no hadoop-aws)
        "FRUITS_MOBILENET_WEIGHTS": f"s3://{bucket}/models/{weights.name}",
        "FRUITS_CACHE_DIR": str(engine_cache),
        "FRUITS_PCA_K": str(K),
        "FRUITS_EMR_POLL_SECONDS": "1",  # the launcher's 15 s would dominate a test of 10 steps
    }
    saved = dict(os.environ)
    os.environ.update(env)
    standin = EmrStandIn([cluster_id], base / "cluster", step_timeout=300, deadline_seconds=900)
    standin.start()
    try:
        yield {"bucket": bucket, "cluster_id": cluster_id, "images": images, "lake": base / "lake", "home": home,
               "env": env, "standin": standin, "weights": weights, "base": base}
    finally:
        standin.stop()
        os.environ.clear()
        os.environ.update(saved)
        fresh_definitions()


@pytest.fixture(scope="module")
def materialized(emr):
    """`fruits run --deployment emr`: two Dagster runs (embed, reduce), every step an EMR step."""
    fresh_definitions()
    started = time.monotonic()
    code = main(["run", "--deployment", "emr"])
    seconds = time.monotonic() - started
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    records = list(emr["standin"].records)
    return {**emr, "code": code, "seconds": seconds, "instance": instance, "runs": runs, "records": records}


def check_evaluation(instance, asset: str, check: str):
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert record is not None and record.event is not None, check
    return record.event.dagster_event.event_specific_data


# ---------------------------------------------------------------------------------------------
# (a) the whole graph on "EMR"


def test_every_step_ran_as_its_own_emr_step(materialized):
    assert materialized["code"] == 0
    records = materialized["records"]
    assert [r.state for r in records] == ["COMPLETED"] * STEPS_PER_GRAPH, [(r.step_id, r.output_tail) for r in records]
    steps = {s["Id"]: s for s in cluster_steps(materialized["cluster_id"])}
    assert set(steps) == {r.step_id for r in records}
    bucket = materialized["bucket"]
    for record in records:
        step = steps[record.step_id]
        assert step["Status"]["State"] == "COMPLETED" and step["ActionOnFailure"] == "CONTINUE"
        args = step["Config"]["Args"]
        # What the launcher asked EMR for: YARN, this project's code and dagster's step entry point, from S3.
        assert args[:3] == ["/usr/lib/spark/bin/spark-submit", "--master", "yarn"]
        assert "spark.master=yarn" in args and "spark.driver.memory=4g" in args
        py_files = args[args.index("--py-files") + 1]
        assert py_files.startswith(f"s3://{bucket}/emr-staging/") and py_files.endswith("/code.zip")
        assert args[-3].endswith("/emr_step_main.py") and args[-2] == bucket and args[-1].endswith("/step_run_ref.pkl")
        # What the stand-in ran: the same command, only made local.
        assert record.command[0] == LOCAL_SPARK_SUBMIT and "local[2]" in record.command
        assert record.command[-2:] == args[-2:]
        assert [a for a in record.command if a.startswith("spark.sql")] == [a for a in args if a.startswith("spark.sql")]
    names = sorted(s["Name"].rsplit(" ", 1)[-1] for s in steps.values())
    assert "raw_images" in names and "mobilenet_features_and_errors" in names and "pca_features" in names
    instance = materialized["instance"]
    assert sorted(instance.get_dynamic_partitions("fruit_class")) == sorted(CLASSES)
    for asset in ["raw_images", "labelled_images", "mobilenet_features", "image_errors"]:
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(CLASSES), asset


def test_same_data_in_the_lake_as_local(materialized):
    lake = materialized["lake"]
    n = len(CLASSES) * PER_CLASS
    features = read(lake, "mobilenet_features").to_pandas()
    assert len(features) == n and features["path"].is_unique
    assert set(features["label"]) == set(CLASSES) and set(features["split"]) == {"Test"}
    vectors = np.stack(features["features"].to_numpy())
    assert vectors.shape == (n, 1280) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert len(read(lake, "image_errors")) == 0
    pca = read(lake, "pca_features").to_pandas()
    assert len(pca) == n and all(len(v) == K for v in pca["pca_features"])
    variance = read(lake, "pca_explained_variance").to_pandas().sort_values("component")
    assert list(variance["component"][variance["kept"]]) == list(range(1, K + 1))
    assert (lake / "pca_model" / "metadata").is_dir()
    info = read(lake, "model_info").to_pylist()[0]
    assert info["weights_sha256"] == sha256_file(materialized["weights"])  # the weights came from S3, intact


def test_same_metadata_and_check_results_as_local(materialized):
    instance = materialized["instance"]
    n = len(CLASSES) * PER_CLASS
    raw = latest(instance, "raw_images")
    assert raw["images"] == n and raw["ignored_files"] == 0 and raw["bytes_listed"] > 0
    assert per_class(instance, "raw_images", "class_images") == {c: PER_CLASS for c in CLASSES}
    features = latest(instance, "mobilenet_features")
    assert features["images_embedded"] == n and features["errors"] == 0 and features["embedding_dim"] == 1280
    assert features["weights_sha256"] == sha256_file(materialized["weights"])
    pca = latest(instance, "pca_model")
    assert pca["k"] == K and len(pca["explained_variance"]) == K
    for asset, check in CHECKS:
        evaluation = check_evaluation(instance, asset, check)
        assert evaluation.passed, (check, evaluation.metadata)
    # The step's instance knew the run's partitions and what was materialized (staged by the launcher): without
    # that, this blocking check would pass having checked no class at all.
    labels = check_evaluation(instance, "labelled_images", "labels_present").metadata
    assert labels["classes_checked"].value == len(CLASSES)
    accuracy = check_evaluation(instance, "pca_features", "pca_features_separate_classes").metadata
    assert accuracy["loo_1nn_accuracy"].value >= 0.9 and accuracy["images_scored"].value == n


def test_every_emr_materialization_carries_cluster_step_and_cost(materialized):
    instance = materialized["instance"]
    by_step = {r.step_id: r for r in materialized["records"]}
    cluster_id = materialized["cluster_id"]
    events = [
        e
        for asset in ASSETS
        for e in instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
    ]
    assert {e.asset_key.to_user_string() for e in events} == set(ASSETS)
    evaluations = [check_evaluation(instance, asset, check) for asset, check in CHECKS]
    steps_seen = set()
    for metadata in [e.asset_materialization.metadata for e in events] + [ev.metadata for ev in evaluations]:
        step_id = metadata["emr/step_id"].value
        assert step_id in by_step, step_id
        steps_seen.add(step_id)
        assert metadata["emr/cluster_id"].value == cluster_id
        assert metadata["emr/region"].value == REGION
        assert metadata["emr/instances"].value == INSTANCES
        assert metadata["emr/instance_groups"].value == {
            "MASTER": {"instance_type": "m5.xlarge", "count": 1},
            "CORE": {"instance_type": "m5.xlarge", "count": 2},
        }
        seconds = metadata["emr/step_seconds"].value
        assert metadata["emr/step_seconds_source"].value == "EMR step timeline"
        # EMR's timeline for the step: what the stand-in measured around spark-submit (moto keeps whole seconds).
        assert seconds == pytest.approx(by_step[step_id].seconds, abs=1.5) and seconds > 0
        assert metadata["emr/estimated_cost_eur"].value == pytest.approx(infra.estimate_cost_eur(INSTANCES, seconds), abs=1e-4)
        assert metadata["emr/estimated_cost_eur"].value >= infra.estimate_cost_eur(INSTANCES, 60) - 1e-4  # 1-min minimum
    # Every EMR step that produced an asset or a check result is accounted for (the multi-asset step twice).
    assert steps_seen == set(by_step)
    assert latest(instance, "mobilenet_features")["emr/step_id"] == latest(instance, "image_errors")["emr/step_id"]


def test_staged_code_package_and_step_settings(materialized):
    s3 = boto3.client("s3", region_name=REGION)
    bucket = materialized["bucket"]
    keys = staged_keys(bucket)
    run_id = materialized["runs"][-1].run_id  # the embed run (get_runs is newest first)
    prefix = f"emr-staging/{run_id}/raw_images/"
    assert {k[len(prefix):] for k in keys if k.startswith(prefix)} == {
        "emr_step_main.py", "code.zip", "step_run_ref.pkl", "fruits_step_context.json", "events.pkl"
    }
    for key in keys:  # encrypted like everything else in the lake bucket
        assert s3.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256", key
    code = s3.get_object(Bucket=bucket, Key=prefix + "code.zip")["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(code)).namelist()
    assert {"fruit_assets/definitions.py", "resources/emr.py", "resources/emr_step_main.py", "jobs/__init__.py"} <= set(names)
    assert all(n.split("/")[0] in ("fruit_assets", "resources", "jobs") for n in names), names
    assert not any("__pycache__" in n for n in names) and len(code) < 1_000_000
    context = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "fruits_step_context.json")["Body"].read())
    env = context["env"]
    assert all(k.startswith("FRUITS_") or k == "EMR_CLUSTER_ID" for k in env), env
    assert env["FRUITS_DEPLOYMENT"] == "emr" and env["EMR_CLUSTER_ID"] == materialized["cluster_id"]
    assert env["FRUITS_MOBILENET_WEIGHTS"].startswith(f"s3://{bucket}/") and env["FRUITS_PCA_K"] == str(K)
    assert sorted(context["dynamic_partitions"]["fruit_class"]) == sorted(CLASSES)
    # The stand-in gave the step no FRUITS_* variable: everything it knew came from this file.
    assert not any(k.startswith("FRUITS_") or k == "EMR_CLUSTER_ID" for k in materialized["standin"].env)


# ---------------------------------------------------------------------------------------------
# (d) no credentials in anything the run recorded


def _find_secrets(blob: bytes) -> list[str]:
    return [s for s in FAKE_SECRETS if s.encode() in blob]


def test_scanner_finds_a_planted_secret(tmp_path):
    planted = tmp_path / "x.log"
    planted.write_text(f"oops {FAKE_ENV['AWS_SECRET_ACCESS_KEY']} leaked")
    assert _find_secrets(planted.read_bytes()) == [FAKE_ENV["AWS_SECRET_ACCESS_KEY"]]


def test_no_credentials_in_events_logs_staging_or_steps(materialized):
    instance = materialized["instance"]
    # The step process did have them (as an instance profile would provide): the test is not vacuous.
    assert _find_secrets(json.dumps(materialized["standin"].env).encode()) == FAKE_SECRETS
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            assert not _find_secrets(serialize_value(entry).encode()), entry
    # Everything the Dagster instance wrote: event log and run storage, captured compute logs (stdout/stderr).
    files = [p for p in Path(materialized["home"]).rglob("*") if p.is_file()]
    assert any("compute_logs" in p.parts for p in files)
    for path in files:
        assert not _find_secrets(path.read_bytes()), path
    s3 = boto3.client("s3", region_name=REGION)
    for key in staged_keys(materialized["bucket"]):
        assert not _find_secrets(s3.get_object(Bucket=materialized["bucket"], Key=key)["Body"].read()), key
    for step in cluster_steps(materialized["cluster_id"]):
        assert not _find_secrets(json.dumps(step, default=str).encode()), step["Id"]


# ---------------------------------------------------------------------------------------------
# (b) failures come back as the step's own error


def _embed_run(instance, run_config=None):
    import jobs

    fresh_definitions()
    first, last = sorted(CLASSES)[0], sorted(CLASSES)[-1]
    return dg.execute_job(
        dg.reconstructable(jobs.embed_classes),
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        run_config=run_config,
    )


def _failures(result) -> dict[str, str]:
    return {
        e.step_key: e.event_specific_data.error.to_string()
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    }


def _raw_images_fails(materialized) -> tuple[str, object]:
    """Runs embed_classes, which must fail at raw_images and nowhere else, in one EMR step: returns the error Dagster
    reports for raw_images and the stand-in's record of that step."""
    before = len(materialized["standin"].records)
    result = _embed_run(materialized["instance"])
    assert not result.success
    failures = _failures(result)
    assert list(failures) == ["raw_images"], failures
    [record] = materialized["standin"].records[before:]
    return failures["raw_images"], record


def test_python_error_in_the_step_surfaces_with_its_message(materialized, monkeypatch, tmp_path):
    # The images root exists for the run's author but not where the step runs: raw_images fails inside the step.
    missing = tmp_path / "gone"
    monkeypatch.setenv("FRUITS_IMAGES_ROOT", str(missing))
    started = time.monotonic()
    message, record = _raw_images_fails(materialized)
    assert time.monotonic() - started < 240
    assert "LayoutError" in message and str(missing) in message
    # A Python exception does not fail the EMR step (spark-submit exits 0); the error travels in the step's events.
    assert record.state == "COMPLETED"


def test_emr_failing_the_step_raises_with_emrs_reason(materialized):
    materialized["standin"].fail_next_step("Lost node i-0abc123 (spot capacity reclaimed)")
    message, record = _raw_images_fails(materialized)
    assert record.state == "FAILED"
    assert f"EMR step {record.step_id} failed" in message
    assert "Lost node i-0abc123 (spot capacity reclaimed)" in message


def test_step_that_cannot_start_surfaces_its_traceback(materialized):
    # A cluster whose bootstrap installed another Dagster cannot unpickle the staged step: the Python error happens
    # outside Dagster's step execution, so no STEP_FAILURE event carries it; spark-submit fails and EMR only says
    # "Unknown Error.". emr_step_main.py leaves the traceback in S3 and the launcher puts it in the run's error.
    materialized["standin"].replace_next_step_run_ref(b"cdagster._core.definitions.step_launcher_v0\nStepRunRef\n.")
    message, record = _raw_images_fails(materialized)
    assert record.state == "FAILED" and record.returncode not in (0, None)
    assert f"EMR step {record.step_id} failed: Unknown Error." in message
    assert "The step's own error" in message
    assert "No module named 'dagster._core.definitions.step_launcher_v0'" in message


def test_prune_runs_as_an_emr_step(materialized, monkeypatch, tmp_path):
    """`fruits run --prune`'s job on the emr deployment: one EMR step clears a class from every per-class dataset
    (of a copy of the lake, so the other tests keep theirs)."""
    import jobs

    lake = tmp_path / "lake"
    shutil.copytree(materialized["lake"], lake)
    monkeypatch.setenv("FRUITS_LAKE_ROOT", f"file://{lake}")
    fresh_definitions()
    before = len(materialized["standin"].records)
    try:
        result = dg.execute_job(dg.reconstructable(jobs.prune_classes), instance=materialized["instance"],
                                run_config={"ops": {"prune_classes_from_lake": {"config": {"classes": ["Banana"]}}}})
    finally:
        monkeypatch.undo()
        fresh_definitions()
    assert result.success, _failures(result)
    [record] = materialized["standin"].records[before:]
    assert record.state == "COMPLETED" and record.command[0] == LOCAL_SPARK_SUBMIT
    for dataset in CLASS_DATASETS:
        table = read(lake, dataset)  # image_errors has no rows here, so no partition column either
        assert table.num_rows == 0 or "Banana" not in set(table.column("fruit_class").to_pylist()), dataset
    assert set(read(lake, "mobilenet_features").column("label").to_pylist()) == {"Apple Red Yellow 1"}
    assert set(read(materialized["lake"], "mobilenet_features").column("label").to_pylist()) == set(CLASSES)


# ---------------------------------------------------------------------------------------------
# (c) data residency: refused before anything is staged or launched


def _refused_run(emr_fixture, capsys, **env) -> str:
    """`fruits run --deployment emr` with some settings changed; returns what it printed. Nothing may be launched."""
    cluster_id = env.get("EMR_CLUSTER_ID", emr_fixture["cluster_id"])
    region = env.get("FRUITS_AWS_REGION", REGION)
    bucket = env.get("FRUITS_STAGING_BUCKET", emr_fixture["bucket"])
    steps_before = len(cluster_steps(cluster_id, region))
    staged_before = set(staged_keys(bucket))
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env.items():
            mp.setenv(name, value)
        fresh_definitions()
        capsys.readouterr()
        code = main(["run", "--deployment", "emr"])
        out = capsys.readouterr()
    finally:
        mp.undo()
    assert code != 0
    assert len(cluster_steps(cluster_id, region)) == steps_before, "a step was added to the cluster"
    assert set(staged_keys(bucket)) == staged_before, "files were staged"
    return out.out + out.err


def test_non_eu_cluster_region_is_refused(materialized, capsys):
    cluster_id = create_cluster("us-east-1")
    printed = _refused_run(
        materialized, capsys, FRUITS_AWS_REGION="us-east-1", EMR_CLUSTER_ID=cluster_id,
        AWS_ENDPOINT_URL_EMR=emr_endpoint("us-east-1"),
    )
    assert "DataResidencyError" in printed and "'us-east-1'" in printed and "must stay in the EU" in printed


def test_non_eu_bucket_is_refused(materialized, capsys):
    us_bucket = create_bucket("us-east-1")
    printed = _refused_run(materialized, capsys, FRUITS_STAGING_BUCKET=us_bucket)
    assert "DataResidencyError" in printed and f"s3://{us_bucket}" in printed and "'us-east-1'" in printed


def test_allowed_regions_are_configurable(materialized, capsys):
    printed = _refused_run(materialized, capsys, FRUITS_ALLOWED_REGIONS="eu-central-1")
    assert "DataResidencyError" in printed and "'eu-west-1'" in printed and "eu-central-1" in printed


def test_terminated_cluster_is_refused_before_launching(materialized, capsys):
    # Idle auto-termination: the stack still names the cluster, EMR no longer runs anything on it.
    cluster_id = create_cluster()
    boto3.client("emr", region_name=REGION, endpoint_url=emr_endpoint(REGION)).terminate_job_flows(JobFlowIds=[cluster_id])
    printed = _refused_run(materialized, capsys, EMR_CLUSTER_ID=cluster_id)
    assert "ClusterNotUsableError" in printed and f"EMR cluster {cluster_id} is TERMINATED" in printed


# ---------------------------------------------------------------------------------------------
# fruits aws deploy | upload | teardown


def _tiny_wheel(path: Path) -> Path:
    wheel = path / "fruit_assets-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fruit_assets/__init__.py", "")
    return wheel


@pytest.fixture
def cli_env(tmp_path):
    """The CLI exports its flags (e.g. --images) as FRUITS_* variables: keep them out of the other tests."""
    saved = dict(os.environ)
    os.environ["DAGSTER_HOME"] = str(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_aws_cli_deploy_upload_teardown(aws, cli_env, tmp_path, capsys):
    name = f"fruits-cli-{_uid()}"
    common = ["--stack-name", name, "--region", REGION]
    assert main(["aws", "deploy", *common, "--wheel", str(_tiny_wheel(tmp_path)), "--param", "CoreInstanceCount=3"]) == 0
    printed = capsys.readouterr().out
    exports = dict(line[len("export "):].split("=", 1) for line in printed.splitlines() if line.startswith("export "))
    outputs = infra.stack_outputs(name, REGION)
    assert exports["EMR_CLUSTER_ID"] == outputs["ClusterId"] and exports["FRUITS_STAGING_BUCKET"] == outputs["LakeBucketName"]
    assert exports["FRUITS_LAKE_ROOT"] == f"s3://{outputs['LakeBucketName']}/lake" and exports["FRUITS_DEPLOYMENT"] == "emr"
    bucket = outputs["LakeBucketName"]
    s3 = boto3.client("s3", region_name=REGION)
    assert sorted(staged_keys(bucket, "bootstrap/")) == ["bootstrap/bootstrap.sh", "bootstrap/fruit_assets-0.0.1-py3-none-any.whl"]

    images = copy_images(tmp_path / "images", classes=CLASSES[:1], per_class=2)
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not really weights")
    assert main(["aws", "upload", *common, "--images", str(images), "--weights", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert f"export FRUITS_IMAGES_ROOT=s3://{bucket}/images" in printed
    assert f"export FRUITS_MOBILENET_WEIGHTS=s3://{bucket}/models/w.h5" in printed
    assert len(staged_keys(bucket, "images/Test/")) == 2
    assert s3.head_object(Bucket=bucket, Key="models/w.h5")["ServerSideEncryption"] == "AES256"

    assert main(["aws", "teardown", *common]) == 0
    assert "kept" in capsys.readouterr().out
    assert infra.stack_outputs(name, REGION) is None
    assert s3.head_bucket(Bucket=bucket)  # data survives a teardown unless asked


def test_aws_cli_refuses_regions_outside_the_allowlist(aws, cli_env, monkeypatch):
    with pytest.raises(infra.DataResidencyError):
        main(["aws", "deploy", "--stack-name", f"x-{_uid()}", "--region", "us-east-1", "--no-cluster"])
    monkeypatch.setenv("FRUITS_ALLOWED_REGIONS", "eu-central-1")
    with pytest.raises(infra.DataResidencyError):
        main(["aws", "upload", "--region", REGION, "--bucket", "any", "--images", "/nonexistent"])
