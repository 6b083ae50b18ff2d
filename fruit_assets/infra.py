"""Deploying, feeding, pricing and tearing down the EMR side of fruit_assets.

Every function takes its region explicitly: the photos and results must stay in the EU, so no
call may fall back to whatever region a developer's AWS config happens to name. The template
is `infra/fruits_emr.yaml`; deploy it twice the first time (CreateCluster=false, then
`upload_bootstrap`, then CreateCluster=true) because the cluster runs the bootstrap script from
the bucket that the same stack creates.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError, WaiterError

EU_REGIONS: tuple[str, ...] = (
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
)
DEFAULT_REGION = "eu-west-1"

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO_ROOT / "infra" / "fruits_emr.yaml"
BOOTSTRAP_PATH = REPO_ROOT / "infra" / "bootstrap.sh"
BOOTSTRAP_PREFIX = "bootstrap/"
SSE = "AES256"  # matches the bucket default; sent explicitly so a changed default can't silently differ


class DataResidencyError(ValueError):
    """A resource would be created or used outside the allowed (EU) regions."""


class UnknownInstanceTypeError(ValueError):
    """No price is known for an instance type, so no honest estimate can be made."""


class StackDeployError(RuntimeError):
    """CloudFormation did not reach a *_COMPLETE state."""


def assert_eu_region(region: str | None, what: str, allowed: tuple[str, ...] | list[str] = EU_REGIONS) -> str:
    """Refuse before any data moves: a wrong region is a compliance incident, not a retryable error."""
    if not region or region not in allowed:
        raise DataResidencyError(
            f"{what} is in region {region!r}, outside the allowed regions {', '.join(allowed)}; "
            "fruit data must stay in the EU."
        )
    return region


def bucket_region(s3_client: Any, bucket: str) -> str:
    """Where a bucket really lives (not where the client points); S3 reports us-east-1 as null and eu-west-1 as legacy 'EU'."""
    location = s3_client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    if not location:
        return "us-east-1"
    if location == "EU":
        return "eu-west-1"
    return location


# ---------------------------------------------------------------------------------------------
# CloudFormation


def _stack(cf: Any, stack_name: str) -> dict[str, Any] | None:
    try:
        stack = cf.describe_stacks(StackName=stack_name)["Stacks"][0]
    except ClientError as e:
        if "does not exist" in str(e):
            return None
        raise
    return None if stack["StackStatus"] == "DELETE_COMPLETE" else stack


def _outputs(stack: Mapping[str, Any] | None) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}


def _param_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _wait(cf: Any, waiter: str, stack_name: str) -> None:
    try:
        # EMR clusters take ~10-15 min to reach WAITING; allow an hour.
        cf.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig={"Delay": 15, "MaxAttempts": 240})
    except WaiterError as e:  # add the reasons CloudFormation gives
        reasons = []
        try:
            for ev in cf.describe_stack_events(StackName=stack_name)["StackEvents"][:20]:
                if ev.get("ResourceStatus", "").endswith("FAILED"):
                    reasons.append(f"{ev['LogicalResourceId']}: {ev.get('ResourceStatusReason', '')}")
        except ClientError:
            pass
        raise StackDeployError(f"stack {stack_name} failed ({waiter}): {e}; " + "; ".join(reasons)) from e


def deploy_stack(
    stack_name: str,
    region: str,
    template_path: str | os.PathLike[str] = TEMPLATE_PATH,
    parameters: Mapping[str, Any] | None = None,
    wait: bool = True,
) -> dict[str, str]:
    """Create or update, so one command serves first deploy and every change; returns the stack Outputs.

    `parameters` is the full set: anything omitted reverts to the template default on update.
    """
    assert_eu_region(region, f"CloudFormation stack {stack_name}")
    cf = boto3.client("cloudformation", region_name=region)
    kwargs = dict(
        StackName=stack_name,
        TemplateBody=Path(template_path).read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": _param_value(v)} for k, v in (parameters or {}).items()],
        Capabilities=["CAPABILITY_IAM"],  # the template names no IAM resources
        Tags=[{"Key": "Project", "Value": "fruits"}],
    )
    existing = _stack(cf, stack_name)
    if existing and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        raise StackDeployError(f"stack {stack_name} is ROLLBACK_COMPLETE and cannot be updated; run teardown first.")
    if existing is None:
        cf.create_stack(**kwargs)
        waiter = "stack_create_complete"
    else:
        try:
            cf.update_stack(**kwargs)
        except ClientError as e:
            if "No updates are to be performed" in str(e):
                return _outputs(existing)
            raise
        waiter = "stack_update_complete"
    if wait:
        _wait(cf, waiter, stack_name)
    return _outputs(_stack(cf, stack_name))


def stack_outputs(stack_name: str, region: str) -> dict[str, str] | None:
    """The Outputs of a live stack (bucket, cluster id, ...), or None when there is no such stack."""
    stack = _stack(boto3.client("cloudformation", region_name=region), stack_name)
    return None if stack is None else _outputs(stack)


def teardown(stack_name: str, region: str, keep_bucket: bool = True) -> str | None:
    """Delete the stack; the bucket is Retain in the template so data survives unless keep_bucket=False.

    A retained bucket is no longer managed by any stack: a later deploy creates a new one
    (or fails on a fixed BucketName), so pass keep_bucket=False when the data is not needed.
    Returns the lake bucket name (or None if the stack did not exist).
    """
    cf = boto3.client("cloudformation", region_name=region)
    stack = _stack(cf, stack_name)
    if stack is None:
        return None
    bucket = _outputs(stack).get("LakeBucketName")
    cf.delete_stack(StackName=stack_name)
    _wait(cf, "stack_delete_complete", stack_name)
    if bucket and not keep_bucket:
        _delete_bucket(boto3.client("s3", region_name=region), bucket)
    return bucket


def _delete_bucket(s3: Any, bucket: str) -> None:
    # Versions and delete markers too: versioning is a template option.
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        objs = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for i in range(0, len(objs), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs[i : i + 1000], "Quiet": True})
    s3.delete_bucket(Bucket=bucket)


# ---------------------------------------------------------------------------------------------
# S3 uploads


def _eu_bucket(s3: Any, bucket: str, region: str) -> None:
    assert_eu_region(region, f"S3 client for s3://{bucket}")
    assert_eu_region(bucket_region(s3, bucket), f"s3://{bucket}")


def _existing_sizes(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            sizes[obj["Key"]] = obj["Size"]
    return sizes


def upload_images(
    local_root: str | os.PathLike[str], bucket: str, prefix: str, region: str, max_workers: int = 16
) -> int:
    """Mirror `<root>/<Split>/<Class>/<file>` to `s3://bucket/prefix/...`; re-runs only send new or changed-size files.

    Size (not checksum) decides "already there": one LIST instead of a HEAD or hash per image
    keeps re-runs over ~90k photos cheap. Hidden files and anything not at that depth are skipped.
    Returns the number of files uploaded.
    """
    root = Path(local_root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} is not a directory")
    s3 = boto3.client("s3", region_name=region)
    _eu_bucket(s3, bucket, region)
    base = prefix.strip("/")
    key_of = (lambda rel: f"{base}/{rel}") if base else (lambda rel: rel)
    existing = _existing_sizes(s3, bucket, f"{base}/" if base else "")

    todo: list[tuple[Path, str]] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or len(rel.parts) != 3 or any(p.startswith(".") for p in rel.parts):
            continue
        key = key_of(rel.as_posix())
        if existing.get(key) != path.stat().st_size:
            todo.append((path, key))

    def put(item: tuple[Path, str]) -> None:
        s3.upload_file(str(item[0]), bucket, item[1], ExtraArgs={"ServerSideEncryption": SSE})

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        list(pool.map(put, todo))
    return len(todo)


def upload_bootstrap(
    bucket: str,
    region: str,
    wheel_path: str | os.PathLike[str],
    bootstrap_path: str | os.PathLike[str] = BOOTSTRAP_PATH,
) -> list[str]:
    """Stage bootstrap.sh and exactly one fruit_assets wheel, so every node installs the pinned stack.

    Older fruit_assets wheels under bootstrap/ are removed: bootstrap.sh refuses to guess between several.
    Returns the uploaded keys.
    """
    wheel = Path(wheel_path)
    if not fnmatch.fnmatch(wheel.name, "fruit_assets-*.whl"):
        raise ValueError(f"{wheel.name} is not a fruit_assets wheel (expected fruit_assets-*.whl)")
    s3 = boto3.client("s3", region_name=region)
    _eu_bucket(s3, bucket, region)
    wheel_key = BOOTSTRAP_PREFIX + wheel.name
    stale = [
        {"Key": k}
        for k in _existing_sizes(s3, bucket, BOOTSTRAP_PREFIX)
        if fnmatch.fnmatch(k, BOOTSTRAP_PREFIX + "fruit_assets-*.whl") and k != wheel_key
    ]
    if stale:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": stale, "Quiet": True})
    keys = [BOOTSTRAP_PREFIX + "bootstrap.sh", wheel_key]
    for src, key in zip((Path(bootstrap_path), wheel), keys):
        s3.upload_file(str(src), bucket, key, ExtraArgs={"ServerSideEncryption": SSE})
    return keys


# ---------------------------------------------------------------------------------------------
# Cost

# On-demand prices, EU (Ireland) eu-west-1, Linux, USD per instance-hour, as listed on
# https://aws.amazon.com/ec2/pricing/on-demand/ and https://aws.amazon.com/emr/pricing/ (2024 list
# prices; not re-checked since, and AWS changes them rarely but without notice: re-check before
# budgeting). "emr" is the EMR surcharge billed on top of EC2 for every instance of the cluster.
# EBS volumes, S3 requests and data transfer are not included.
PRICES_USD_PER_HOUR_EU_WEST_1: dict[str, dict[str, float]] = {
    "m5.xlarge": {"ec2": 0.214, "emr": 0.048},
    "m5.2xlarge": {"ec2": 0.428, "emr": 0.096},
    "m5.4xlarge": {"ec2": 0.856, "emr": 0.192},
    "r5.xlarge": {"ec2": 0.282, "emr": 0.063},
    "c5.xlarge": {"ec2": 0.192, "emr": 0.052},
}
# Fixed documented conversion (about the ECB reference-rate average for 2024), so estimates are
# reproducible run to run; AWS bills EU customers in USD or EUR at its own daily rate.
EUR_PER_USD = 0.92
PRICES_EUR_PER_HOUR_EU_WEST_1: dict[str, dict[str, float]] = {
    itype: {part: usd * EUR_PER_USD for part, usd in parts.items()}
    for itype, parts in PRICES_USD_PER_HOUR_EU_WEST_1.items()
}
BILLING_MINIMUM_SECONDS = 60  # EC2 Linux and EMR bill per second with a one-minute minimum


def estimate_cost_eur(instances: Mapping[str, int], seconds: float) -> float:
    """Order-of-magnitude EUR for a run, so a materialization can report what it cost (EC2 + EMR, on-demand)."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    unknown = sorted(t for t in instances if t not in PRICES_EUR_PER_HOUR_EU_WEST_1)
    if unknown:
        raise UnknownInstanceTypeError(
            f"no eu-west-1 price for instance type(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(PRICES_EUR_PER_HOUR_EU_WEST_1))} (add them to the table in fruit_assets/infra.py)"
        )
    if seconds == 0:
        return 0.0
    billed_hours = max(seconds, BILLING_MINIMUM_SECONDS) / 3600.0
    total = 0.0
    for itype, count in instances.items():
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"instance count for {itype} must be an int >= 0, got {count!r}")
        price = PRICES_EUR_PER_HOUR_EU_WEST_1[itype]
        total += count * (price["ec2"] + price["emr"]) * billed_hours
    return total


# ---------------------------------------------------------------------------------------------
# Metadata


def cluster_description(emr_client: Any, cluster_id: str) -> dict[str, Any]:
    """Facts about the cluster that ran an asset, for Dagster metadata; `instances` feeds estimate_cost_eur."""
    cluster = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    groups: dict[str, dict[str, Any]] = {}
    instances: dict[str, int] = {}
    for page in emr_client.get_paginator("list_instance_groups").paginate(ClusterId=cluster_id):
        for g in page.get("InstanceGroups", []):
            count = int(g.get("RequestedInstanceCount", g.get("RunningInstanceCount", 0)))
            groups[g["InstanceGroupType"]] = {"instance_type": g["InstanceType"], "count": count}
            instances[g["InstanceType"]] = instances.get(g["InstanceType"], 0) + count
    return {
        "cluster_id": cluster["Id"],
        "cluster_arn": cluster.get("ClusterArn"),
        "state": cluster["Status"]["State"],
        "release_label": cluster.get("ReleaseLabel"),
        "applications": sorted(a["Name"] for a in cluster.get("Applications", [])),
        "instance_groups": groups,
        "instances": instances,
        "region": emr_client.meta.region_name,
    }
