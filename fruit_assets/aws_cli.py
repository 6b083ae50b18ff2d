"""`fruits aws deploy|upload|teardown`: the EMR side from nothing to ready and back (thin wrappers over infra.py).

deploy    creates or updates the CloudFormation stack (infra/fruits_emr.yaml) in the right order: bucket and IAM
          first (CreateCluster=false), then the bootstrap script and a fruit_assets wheel into the bucket, then the
          cluster (CreateCluster=true), because the cluster runs that bootstrap while it starts. Prints the
          environment `fruits run --deployment emr` needs.
upload    mirrors a local images root (<root>/<Split>/<Class>/<file>) to s3://<bucket>/<prefix>/, sending only new
          or changed files, and/or the MobileNetV2 weights to s3://<bucket>/models/; prints the settings to use.
teardown  deletes the stack (cluster, IAM); the lake bucket is kept unless --delete-bucket.

Every command takes --stack-name (default "fruits") and --region (FRUITS_AWS_REGION, default
eu-west-1); regions outside FRUITS_ALLOWED_REGIONS (default: the EU regions) are refused before any AWS call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_STACK = "fruits"
DEFAULT_IMAGES_PREFIX = "images"


def _default(name: str, fallback: str) -> str:
    return os.environ.get(name) or fallback


def add_commands(subparsers) -> None:
    aws = subparsers.add_parser("aws", help="deploy, feed and tear down the AWS EMR side (docs/aws.md)")
    commands = aws.add_subparsers(dest="aws_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--stack-name", default=DEFAULT_STACK, help="CloudFormation stack name (default fruits)")
        parser.add_argument("--region", default=_default("FRUITS_AWS_REGION", "eu-west-1"),
                            help="AWS region, EU only (FRUITS_AWS_REGION, default eu-west-1)")
        return parser

    deploy = common(commands.add_parser("deploy", help="create or update bucket, IAM roles and the EMR cluster"))
    deploy.add_argument("--wheel", help="fruit_assets-*.whl for the cluster's bootstrap (default: built from this checkout)")
    deploy.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="template parameter, repeatable (e.g. CoreInstanceCount=4, IdleTimeoutSeconds=1800)")
    deploy.add_argument("--no-cluster", action="store_true", help="only bucket and IAM (no cluster, no bootstrap upload)")
    deploy.add_argument("--recreate-cluster", action="store_true",
                        help="replace the stack's cluster (e.g. after idle auto-termination, or for a new wheel)")

    upload = common(commands.add_parser("upload", help="upload a local images root (and weights) to the lake bucket"))
    upload.add_argument("--images", help="local images root, laid out <root>/<Split>/<Class>/<file>")
    upload.add_argument("--weights", help="local MobileNetV2 no-top .h5 weights file, uploaded under models/")
    upload.add_argument("--bucket", help="target bucket (default: the stack's LakeBucketName)")
    upload.add_argument("--prefix", default=DEFAULT_IMAGES_PREFIX, help="key prefix for the images (default images)")

    teardown = common(commands.add_parser("teardown", help="delete the stack; keeps the lake bucket by default"))
    teardown.add_argument("--delete-bucket", action="store_true", help="also empty and delete the lake bucket")


def _say(message: str) -> None:
    print(f"[fruits aws] {message}", flush=True)


def _parameters(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"fruits aws: --param expects KEY=VALUE, got {pair!r}")
        if key == "CreateCluster":
            raise SystemExit("fruits aws: CreateCluster is managed by deploy (use --no-cluster)")
        params[key] = value
    return params


def build_wheel(dest: str | os.PathLike[str]) -> Path:
    """Build the fruit_assets wheel from a copy of this checkout (no build/ or egg-info left in the working tree)."""
    from resources.emr import JOB_PACKAGES, PROJECT_DIR

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(PROJECT_DIR / name, src / name)
        for package in JOB_PACKAGES:
            shutil.copytree(PROJECT_DIR / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)],
            check=True,
        )
    [wheel] = Path(dest).glob("fruit_assets-*.whl")
    return wheel


def deploy(args: argparse.Namespace) -> int:
    from fruit_assets import infra

    params = _parameters(args.param)
    existing = infra.stack_outputs(args.stack_name, args.region) or {}
    if args.no_cluster or args.recreate_cluster or "ClusterId" not in existing:
        _say(f"stack {args.stack_name} in {args.region}: bucket and IAM (CreateCluster=false)")
        outputs = infra.deploy_stack(args.stack_name, args.region, parameters={**params, "CreateCluster": False})
    else:
        outputs = existing
    bucket = outputs["LakeBucketName"]
    if not args.no_cluster:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = Path(args.wheel) if args.wheel else build_wheel(tmp)
            keys = infra.upload_bootstrap(bucket, args.region, wheel)
            _say(f"bootstrap staged: {', '.join(f's3://{bucket}/{k}' for k in keys)}")
        _say(f"stack {args.stack_name}: EMR cluster (CreateCluster=true; EMR takes ~10-15 minutes to start)")
        outputs = infra.deploy_stack(args.stack_name, args.region, parameters={**params, "CreateCluster": True})
    _say("ready; for `fruits run --deployment emr`:")
    exports = {
        "FRUITS_DEPLOYMENT": "emr",
        "FRUITS_AWS_REGION": outputs.get("Region", args.region),
        "FRUITS_STAGING_BUCKET": bucket,
        "FRUITS_LAKE_ROOT": f"s3://{bucket}/lake",
    }
    if outputs.get("ClusterId"):
        exports["EMR_CLUSTER_ID"] = outputs["ClusterId"]
    for name, value in exports.items():
        print(f"export {name}={value}")
    return 0


def upload(args: argparse.Namespace) -> int:
    import boto3

    from fruit_assets import infra

    if not args.images and not args.weights:
        raise SystemExit("fruits aws upload: give --images, --weights or both")
    bucket = args.bucket or (infra.stack_outputs(args.stack_name, args.region) or {}).get("LakeBucketName")
    if not bucket:
        raise SystemExit(f"fruits aws: no --bucket and no stack {args.stack_name!r} in {args.region} to take it from")
    if args.images:
        count = infra.upload_images(args.images, bucket, args.prefix, args.region)
        _say(f"images: {count} file(s) uploaded (unchanged ones skipped)")
        print(f"export FRUITS_IMAGES_ROOT=s3://{bucket}/{args.prefix.strip('/')}")
    if args.weights:
        weights = Path(args.weights)
        if not weights.is_file():
            raise SystemExit(f"fruits aws upload: no weights file {weights}")
        s3 = boto3.client("s3", region_name=args.region)
        infra.assert_eu_region(infra.bucket_region(s3, bucket), f"s3://{bucket}")
        key = f"models/{weights.name}"
        s3.upload_file(str(weights), bucket, key, ExtraArgs={"ServerSideEncryption": infra.SSE})
        _say(f"weights uploaded to s3://{bucket}/{key}")
        print(f"export FRUITS_MOBILENET_WEIGHTS=s3://{bucket}/{key}")
    return 0


def teardown(args: argparse.Namespace) -> int:
    from fruit_assets import infra

    bucket = infra.teardown(args.stack_name, args.region, keep_bucket=not args.delete_bucket)
    if bucket is None:
        _say(f"no stack {args.stack_name} in {args.region}: nothing to delete")
    elif args.delete_bucket:
        _say(f"stack {args.stack_name} and bucket {bucket} deleted")
    else:
        _say(f"stack {args.stack_name} deleted; bucket {bucket} kept (fruits aws teardown --delete-bucket removes it)")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from fruit_assets import infra
    from resources.emr import allowed_regions

    if args.aws_command != "teardown":  # cleaning up is allowed anywhere; creating and uploading are not
        infra.assert_eu_region(args.region, f"--region {args.region}", allowed_regions())
    return {"deploy": deploy, "upload": upload, "teardown": teardown}[args.aws_command](args)
