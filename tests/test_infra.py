"""infra/fruits_emr.yaml, infra/bootstrap.sh and fruit_assets.infra against moto over HTTP.

moto 5.2.5 deploys only part of the template faithfully; each test says which side it checks:
"live" = what moto's APIs return after a real CloudFormation deploy, "template" = the parsed
template, for properties moto's CloudFormation ignores (test_moto_gaps pins that list, so a moto
upgrade that closes a gap fails loudly and the check can move to the live side).
"""

from __future__ import annotations

import ast
import json
import stat
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from cfnlint.decode import cfn_yaml

from fruit_assets import infra
from tests.aws_server import moto_endpoint, regional_client  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "infra" / "fruits_emr.yaml"
BOOTSTRAP = REPO / "infra" / "bootstrap.sh"
REGION = "eu-west-1"
VENV_PYTHON = "/opt/fruits/venv/bin/python"

pytestmark = pytest.mark.filterwarnings(
    # moto says so (from its server thread) for every deploy; test_moto_gaps asserts the consequence.
    "ignore:Tried to parse AWS.*BucketPolicy:UserWarning"
)


def _uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def tpl():
    return cfn_yaml.load(str(TEMPLATE))


def _policy_doc(doc) -> dict:
    """IAM policy document as a dict; moto 5.2.5 returns CloudFormation-created inline policies
    as the Python repr of a dict (single quotes), which is neither JSON nor what AWS returns."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def _default(tpl, ref: dict) -> object:
    """Resolve {"Ref": Param} to the parameter's default (what a plain deploy gets)."""
    return tpl["Parameters"][ref["Ref"]]["Default"]


@pytest.fixture(scope="module")
def stack(moto_endpoint):
    name = f"fruits-test-{_uid()}"
    outputs = infra.deploy_stack(name, REGION, TEMPLATE, {})
    return {"name": name, "outputs": outputs}


# --------------------------------------------------------------------------------------------
# Template


def test_cfn_lint_passes_without_errors_or_warnings():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run(
        [str(cfn_lint), "--include-checks", "I", "--", str(TEMPLATE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_template_bucket_is_private_encrypted_tls_only_and_expires_staging(tpl):
    # Template side: moto's CloudFormation applies only BucketEncryption and Tags of a bucket.
    bucket = tpl["Resources"]["LakeBucket"]
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"
    props = bucket["Properties"]
    pab = props["PublicAccessBlockConfiguration"]
    assert {k: pab[k] for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")} == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    [sse] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == infra.SSE == "AES256"

    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    staging = rules["expire-emr-staging"]
    assert staging["Status"] == "Enabled"
    assert _default(tpl, staging["Prefix"]) == "emr-staging/"
    assert _default(tpl, staging["ExpirationInDays"]) == 7
    logs = rules["expire-emr-logs"]
    assert logs["Prefix"] == "emr-logs/" and logs["Status"] == "Enabled" and "ExpirationInDays" in logs

    # AWS::S3::BucketPolicy is not deployable on moto at all (see test_moto_gaps).
    policy = tpl["Resources"]["LakeBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "LakeBucket"}
    [deny] = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [{"Fn::GetAtt": ["LakeBucket", "Arn"]}, {"Fn::Sub": "${LakeBucket.Arn}/*"}]


def test_template_cluster_shape(tpl):
    # Template side: moto's CloudFormation ignores Applications, instance groups,
    # AutoTerminationPolicy, VisibleToAllUsers, BootstrapActions and Configurations.
    cluster = tpl["Resources"]["Cluster"]
    props = cluster["Properties"]
    assert _default(tpl, props["ReleaseLabel"]) == "emr-7.5.0"
    assert props["Applications"][0] == {"Name": "Spark"}
    assert props["Applications"][1] == {
        "Fn::If": ["WithJupyterHub", {"Name": "JupyterHub"}, {"Ref": "AWS::NoValue"}]
    }
    assert tpl["Conditions"]["WithJupyterHub"] == {"Fn::Equals": [{"Ref": "EnableJupyterHub"}, "true"]}
    assert _default(tpl, {"Ref": "EnableJupyterHub"}) == "false"

    primary = props["Instances"]["MasterInstanceGroup"]
    core = props["Instances"]["CoreInstanceGroup"]
    assert primary["InstanceCount"] == 1
    assert _default(tpl, core["InstanceCount"]) == 2
    assert _default(tpl, primary["InstanceType"]) == _default(tpl, core["InstanceType"]) == "m5.xlarge"
    # Only instance types estimate_cost_eur can price are deployable.
    for param in ("PrimaryInstanceType", "CoreInstanceType"):
        assert set(tpl["Parameters"][param]["AllowedValues"]) == set(infra.PRICES_EUR_PER_HOUR_EU_WEST_1)

    assert _default(tpl, props["AutoTerminationPolicy"]["IdleTimeout"]) == 3600
    assert props["VisibleToAllUsers"] is True
    assert props["LogUri"] == {"Fn::Sub": "s3://${LakeBucket}/emr-logs/"}
    [boot] = props["BootstrapActions"]
    assert boot["ScriptBootstrapAction"]["Path"] == {"Fn::Sub": "s3://${LakeBucket}/bootstrap/bootstrap.sh"}
    assert boot["ScriptBootstrapAction"]["Args"] == [{"Ref": "LakeBucket"}]

    confs = {c["Classification"]: c for c in props["Configurations"]}
    [export] = confs["spark-env"]["Configurations"]
    assert export["Classification"] == "export"
    assert export["ConfigurationProperties"]["PYSPARK_PYTHON"] == VENV_PYTHON
    assert confs["spark-defaults"]["ConfigurationProperties"]["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    # The interpreter Spark is told to use is the one bootstrap.sh creates.
    assert 'VENV="${FRUITS_VENV:-/opt/fruits/venv}"' in BOOTSTRAP.read_text()
    assert VENV_PYTHON.startswith("/opt/fruits/venv/")

    # AmazonEMRServicePolicy_v2 acts only on tagged resources and may only pass EMR_EC2_DefaultRole.
    tags = {t["Key"]: t["Value"] for t in props["Tags"]}
    assert tags["for-use-with-amazon-emr-managed-policies"] == "true"
    service = tpl["Resources"]["EmrServiceRole"]["Properties"]
    assert service["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"}
    ]
    [passrole] = service["Policies"][0]["PolicyDocument"]["Statement"]
    assert passrole["Action"] == "iam:PassRole"
    assert passrole["Resource"] == {"Fn::GetAtt": ["Ec2InstanceRole", "Arn"]}


def test_template_tags_everything_taggable_with_project_fruits(tpl):
    untaggable = {"AWS::S3::BucketPolicy", "AWS::IAM::InstanceProfile"}  # no Tags property in CloudFormation
    for logical_id, res in tpl["Resources"].items():
        if res["Type"] in untaggable:
            continue
        tags = {t["Key"]: t["Value"] for t in res["Properties"]["Tags"]}
        assert tags.get("Project") == "fruits", logical_id
    assert set(tpl["Outputs"]) >= {"LakeBucketName", "ClusterId", "Region", "ServiceRoleArn", "InstanceProfileArn"}
    assert tpl["Outputs"]["Region"]["Value"] == {"Ref": "AWS::Region"}


# --------------------------------------------------------------------------------------------
# Deployed on moto (live)


def test_stack_outputs(stack):
    out = stack["outputs"]
    assert out["Region"] == REGION
    assert out["LakeBucketName"].startswith(stack["name"] + "-lakebucket-")
    assert out["ClusterId"].startswith("j-")
    assert ":role/" in out["ServiceRoleArn"] and ":instance-profile/" in out["InstanceProfileArn"]


def test_live_bucket_region_encryption_and_tags(stack):
    s3 = boto3.client("s3", region_name=REGION)
    bucket = stack["outputs"]["LakeBucketName"]
    assert infra.bucket_region(s3, bucket) == REGION
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert {"Key": "Project", "Value": "fruits"} in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]


def test_live_instance_role_reaches_only_the_lake_bucket(stack):
    iam = boto3.client("iam", region_name=REGION)
    bucket = stack["outputs"]["LakeBucketName"]
    profile_name = stack["outputs"]["InstanceProfileArn"].rsplit("/", 1)[1]
    [role] = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"]
    trust = role["AssumeRolePolicyDocument"]
    trust = _policy_doc(trust)
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}

    names = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    assert names, "instance role has no inline policy"
    resources, actions = set(), set()
    for name in names:
        doc = _policy_doc(iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"])
        for st in doc["Statement"]:
            assert st["Effect"] == "Allow"
            res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            act = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            resources.update(res)
            actions.update(act)
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"} <= actions
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    assert {"Key": "Project", "Value": "fruits"} in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]

    # The service role may pass exactly this role (the v2 managed policy only passes EMR_EC2_DefaultRole).
    service_role = stack["outputs"]["ServiceRoleArn"].rsplit("/", 1)[1]
    [pass_policy] = iam.list_role_policies(RoleName=service_role)["PolicyNames"]
    doc = _policy_doc(iam.get_role_policy(RoleName=service_role, PolicyName=pass_policy)["PolicyDocument"])
    assert doc["Statement"][0]["Action"] == "iam:PassRole"
    assert doc["Statement"][0]["Resource"] == role["Arn"]


def test_live_cluster_from_stack(stack):
    # The stack's cluster lives in moto's eu-west-1 EMR backend (CloudFormation honours the signing
    # region) but moto's EMR API on a loopback endpoint serves us-east-1, so ask it under the real
    # regional hostname (tests.aws_server.regional_client).
    emr = regional_client("emr", REGION)
    out = stack["outputs"]
    cluster = emr.describe_cluster(ClusterId=out["ClusterId"])["Cluster"]
    bucket = out["LakeBucketName"]
    assert cluster["ReleaseLabel"] == "emr-7.5.0"
    assert cluster["Name"] == f"{stack['name']}-fruits"
    assert cluster["LogUri"] == f"s3://{bucket}/emr-logs/"
    assert cluster["ServiceRole"] == out["ServiceRoleArn"].rsplit("/", 1)[1]
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == out["InstanceProfileArn"].rsplit("/", 1)[1]
    assert f":{REGION}:" in cluster["ClusterArn"]
    tags = {t["Key"]: t["Value"] for t in cluster["Tags"]}
    assert tags == {"Project": "fruits", "for-use-with-amazon-emr-managed-policies": "true"}


def test_moto_gaps(stack):
    """Pins what moto 5.2.5 does NOT emulate from this template (asserted on the template instead)."""
    cf = boto3.client("cloudformation", region_name=REGION)
    created = {
        r["LogicalResourceId"]
        for r in cf.list_stack_resources(StackName=stack["name"])["StackResourceSummaries"]
    }
    assert {"LakeBucket", "EmrServiceRole", "Ec2InstanceRole", "Ec2InstanceProfile", "Cluster"} <= created
    assert "LakeBucketPolicy" not in created  # no moto CloudFormation support for AWS::S3::BucketPolicy

    s3 = boto3.client("s3", region_name=REGION)
    bucket = stack["outputs"]["LakeBucketName"]
    for call, code in [
        (s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration"),
        (s3.get_bucket_policy, "NoSuchBucketPolicy"),
        (s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration"),
    ]:
        with pytest.raises(ClientError) as e:
            call(Bucket=bucket)
        assert e.value.response["Error"]["Code"] == code

    emr = regional_client("emr", REGION)
    cluster_id = stack["outputs"]["ClusterId"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Applications"] == [] and cluster["Configurations"] == []
    assert cluster["VisibleToAllUsers"] is False
    assert emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"] == []
    assert emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"] == []
    # ManagedPolicyArns is not attached by moto's CloudFormation.
    iam = boto3.client("iam", region_name=REGION)
    service_role = stack["outputs"]["ServiceRoleArn"].rsplit("/", 1)[1]
    assert iam.list_attached_role_policies(RoleName=service_role)["AttachedPolicies"] == []
    # And the loopback EMR endpoint cannot see the stack's cluster at all (it serves us-east-1).
    with pytest.raises(ClientError):
        boto3.client("emr", region_name=REGION).describe_cluster(ClusterId=cluster_id)


def test_two_phase_deploy_bootstrap_then_cluster(moto_endpoint, tmp_path):
    name = f"fruits-2ph-{_uid()}"
    first = infra.deploy_stack(name, REGION, TEMPLATE, {"CreateCluster": False, "StagingExpirationDays": 3})
    assert "ClusterId" not in first and first["LakeBucketName"]
    bucket = first["LakeBucketName"]

    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=bucket, Key="bootstrap/fruit_assets-0.0.9-py3-none-any.whl", Body=b"old")
    wheel = tmp_path / "fruit_assets-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    keys = infra.upload_bootstrap(bucket, REGION, wheel)
    assert keys == ["bootstrap/bootstrap.sh", "bootstrap/fruit_assets-0.1.0-py3-none-any.whl"]
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="bootstrap/")["Contents"]}
    assert listed == set(keys)  # the stale wheel is gone: bootstrap.sh wants exactly one
    head = s3.head_object(Bucket=bucket, Key="bootstrap/bootstrap.sh")
    assert head["ServerSideEncryption"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key="bootstrap/bootstrap.sh")["Body"].read() == BOOTSTRAP.read_bytes()

    second = infra.deploy_stack(name, REGION, TEMPLATE, {"CreateCluster": True})
    assert second["LakeBucketName"] == bucket
    assert second["ClusterId"].startswith("j-")

    with pytest.raises(ValueError, match="not a fruit_assets wheel"):
        infra.upload_bootstrap(bucket, REGION, tmp_path / "other-1.0-py3-none-any.whl")


# --------------------------------------------------------------------------------------------
# Region guard


def test_assert_eu_region():
    assert infra.assert_eu_region("eu-west-1", "lake bucket") == "eu-west-1"
    with pytest.raises(infra.DataResidencyError, match=r"lake bucket.*'us-east-1'") as e:
        infra.assert_eu_region("us-east-1", "lake bucket")
    assert isinstance(e.value, ValueError)
    for bad in (None, "", "EU", "eu-west-9"):
        with pytest.raises(infra.DataResidencyError):
            infra.assert_eu_region(bad, "x")
    with pytest.raises(infra.DataResidencyError):
        infra.assert_eu_region("eu-west-1", "x", allowed=("eu-central-1",))


def test_deploy_outside_eu_is_refused_before_any_call(moto_endpoint):
    name = f"fruits-us-{_uid()}"
    with pytest.raises(infra.DataResidencyError, match="us-east-1"):
        infra.deploy_stack(name, "us-east-1", TEMPLATE, {})
    names = [s["StackName"] for s in boto3.client("cloudformation", region_name="us-east-1").describe_stacks()["Stacks"]]
    assert name not in names


def test_bucket_region(moto_endpoint, tmp_path):
    s3 = boto3.client("s3", region_name=REGION)
    eu, us = f"fruits-eu-{_uid()}", f"fruits-us-{_uid()}"
    s3.create_bucket(Bucket=eu, CreateBucketConfiguration={"LocationConstraint": REGION})
    assert infra.bucket_region(s3, eu) == "eu-west-1"
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=us)  # S3 reports null
    assert infra.bucket_region(s3, us) == "us-east-1"

    class LegacyEU:  # moto refuses to create "EU" buckets; real S3 still reports old ones that way
        def get_bucket_location(self, Bucket):
            return {"LocationConstraint": "EU"}

    assert infra.bucket_region(LegacyEU(), "old") == "eu-west-1"

    # The guard checks where the bucket really is, not what the client was configured with.
    (tmp_path / "Training" / "Apple").mkdir(parents=True)
    (tmp_path / "Training" / "Apple" / "a.jpg").write_bytes(b"x")
    with pytest.raises(infra.DataResidencyError, match=f"s3://{us}"):
        infra.upload_images(tmp_path, us, "images", REGION)
    assert "Contents" not in s3.list_objects_v2(Bucket=us)


# --------------------------------------------------------------------------------------------
# Uploads and teardown


def _image_tree(root: Path) -> None:
    for rel, data in {
        "Training/Apple Red 1/r_0_100.jpg": b"\xff\xd8apple",
        "Training/Banana/0_100.jpg": b"\xff\xd8banana!",
        "Test/Apple Red 1/r_1_100.jpg": b"\xff\xd8a",
        "Test/Banana/.DS_Store": b"junk",  # hidden: skipped
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "LICENSE").write_text("not an image")  # wrong depth: skipped


def test_upload_images_preserves_keys_encrypts_and_is_idempotent(moto_endpoint, tmp_path):
    s3 = boto3.client("s3", region_name=REGION)
    bucket = f"fruits-img-{_uid()}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    _image_tree(tmp_path)

    assert infra.upload_images(tmp_path, bucket, "raw/fruits-360/", REGION) == 3
    objs = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert objs == {
        "raw/fruits-360/Training/Apple Red 1/r_0_100.jpg": 7,
        "raw/fruits-360/Training/Banana/0_100.jpg": 9,
        "raw/fruits-360/Test/Apple Red 1/r_1_100.jpg": 3,
    }
    head = s3.head_object(Bucket=bucket, Key="raw/fruits-360/Training/Banana/0_100.jpg")
    assert head["ServerSideEncryption"] == "AES256"

    assert infra.upload_images(tmp_path, bucket, "raw/fruits-360", REGION) == 0
    (tmp_path / "Training/Banana/0_100.jpg").write_bytes(b"\xff\xd8longer banana")
    assert infra.upload_images(tmp_path, bucket, "raw/fruits-360", REGION) == 1
    assert s3.get_object(Bucket=bucket, Key="raw/fruits-360/Training/Banana/0_100.jpg")["Body"].read() == (
        b"\xff\xd8longer banana"
    )
    with pytest.raises(FileNotFoundError):
        infra.upload_images(tmp_path / "missing", bucket, "raw", REGION)


@pytest.mark.parametrize("keep_bucket", [True, False])
def test_teardown(moto_endpoint, tmp_path, keep_bucket):
    name = f"fruits-td-{_uid()}"
    bucket = infra.deploy_stack(name, REGION, TEMPLATE, {"CreateCluster": False})["LakeBucketName"]
    _image_tree(tmp_path)
    assert infra.upload_images(tmp_path, bucket, "raw", REGION) == 3

    assert infra.teardown(name, REGION, keep_bucket=keep_bucket) == bucket
    cf = boto3.client("cloudformation", region_name=REGION)
    live = [s for s in cf.describe_stacks()["Stacks"] if s["StackName"] == name and s["StackStatus"] != "DELETE_COMPLETE"]
    assert live == []
    s3 = boto3.client("s3", region_name=REGION)
    if keep_bucket:
        s3.head_bucket(Bucket=bucket)
        assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 3
    else:
        with pytest.raises(ClientError) as e:
            s3.head_bucket(Bucket=bucket)
        assert e.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
    assert infra.teardown(name, REGION) is None  # already gone: nothing to do


# --------------------------------------------------------------------------------------------
# Cost and cluster metadata


def test_estimate_cost_eur():
    usd = infra.PRICES_USD_PER_HOUR_EU_WEST_1["m5.xlarge"]
    expected = 3 * (usd["ec2"] + usd["emr"]) * infra.EUR_PER_USD
    assert infra.estimate_cost_eur({"m5.xlarge": 3}, 3600) == pytest.approx(expected)
    assert infra.estimate_cost_eur({"m5.xlarge": 3}, 3600) == pytest.approx(3 * (0.214 + 0.048) * 0.92)
    assert infra.estimate_cost_eur({"m5.xlarge": 1, "r5.xlarge": 2}, 1800) == pytest.approx(
        0.5
        * sum(
            n * (p["ec2"] + p["emr"])
            for n, p in [(1, infra.PRICES_EUR_PER_HOUR_EU_WEST_1["m5.xlarge"]), (2, infra.PRICES_EUR_PER_HOUR_EU_WEST_1["r5.xlarge"])]
        )
    )
    # Per-second billing with a one-minute minimum.
    assert infra.estimate_cost_eur({"m5.xlarge": 1}, 10) == pytest.approx(infra.estimate_cost_eur({"m5.xlarge": 1}, 60))
    assert infra.estimate_cost_eur({"m5.xlarge": 3}, 0) == 0.0
    with pytest.raises(infra.UnknownInstanceTypeError, match="p4d.24xlarge") as e:
        infra.estimate_cost_eur({"m5.xlarge": 1, "p4d.24xlarge": 1}, 60)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError):
        infra.estimate_cost_eur({"m5.xlarge": 1}, -1)


def _run_job_flow(emr, name: str) -> str:
    return emr.run_job_flow(
        Name=name,
        ReleaseLabel="emr-7.5.0",
        Applications=[{"Name": "Spark"}],
        JobFlowRole="fruits-instance-profile",
        ServiceRole="fruits-service-role",
        Instances={
            "InstanceGroups": [
                {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1, "Market": "ON_DEMAND"},
                {"InstanceRole": "CORE", "InstanceType": "m5.xlarge", "InstanceCount": 2, "Market": "ON_DEMAND"},
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
        },
    )["JobFlowId"]


def test_cluster_description_feeds_cost_estimate(moto_endpoint):
    emr = regional_client("emr", REGION)
    cluster_id = _run_job_flow(emr, f"fruits-desc-{_uid()}")
    d = infra.cluster_description(emr, cluster_id)
    assert d["cluster_id"] == cluster_id
    assert d["state"] == "WAITING"
    assert d["release_label"] == "emr-7.5.0"
    assert d["applications"] == ["Spark"]
    assert d["instance_groups"] == {
        "MASTER": {"instance_type": "m5.xlarge", "count": 1},
        "CORE": {"instance_type": "m5.xlarge", "count": 2},
    }
    assert d["instances"] == {"m5.xlarge": 3}
    assert d["region"] == REGION and f":{REGION}:" in d["cluster_arn"]
    json.dumps(d)  # usable as Dagster JSON metadata as-is
    assert infra.estimate_cost_eur(d["instances"], 3600) == pytest.approx(3 * (0.214 + 0.048) * 0.92)


def test_cluster_description_region_is_the_configured_one_on_loopback(moto_endpoint):
    # The step launcher's clients use the plain loopback endpoint, where moto files every cluster
    # under us-east-1 (its ARN says so). The region we report, and guard, is the one we configured.
    emr = boto3.client("emr", region_name=REGION)
    d = infra.cluster_description(emr, _run_job_flow(emr, f"fruits-loop-{_uid()}"))
    assert d["region"] == REGION
    assert ":us-east-1:" in d["cluster_arn"]  # moto artifact, not something real EMR would do
    infra.assert_eu_region(d["region"], f"EMR cluster {d['cluster_id']}")


# --------------------------------------------------------------------------------------------
# bootstrap.sh


def test_bootstrap_script_parses():
    result = subprocess.run(["bash", "-n", str(BOOTSTRAP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = BOOTSTRAP.read_text()
    assert "set -euo pipefail" in text
    assert "dnf install -y python3.11 python3.11-pip" in text


def _fake_bin(tmp_path: Path) -> Path:
    """sudo/dnf/aws/python3.11 stand-ins: dnf logs, aws copies the staged wheels, the rest pass through."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sudo": 'exec "$@"\n',
        "dnf": 'echo "dnf $*" >> "$FAKE_LOG"\n',
        # aws s3 cp s3://BUCKET/bootstrap/ DEST --recursive ...
        "aws": 'echo "aws $*" >> "$FAKE_LOG"\ncp "$FAKE_STAGED"/*.whl "$4"/ 2>/dev/null || true\n',
        "python3.11": f'exec "{sys.executable}" "$@"\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _tiny_wheel(path: Path) -> None:
    dist = "fruit_assets-0.0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fruit_assets/__init__.py", "MARKER = 'from-the-wheel'\n")
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: fruit_assets\nVersion: 0.0.1\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


def _run_bootstrap(tmp_path: Path, staged: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{_fake_bin(tmp_path)}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STAGED": str(staged),
        "FRUITS_VENV": str(tmp_path / "venv"),
        "PIP_NO_INDEX": "1",  # nothing here may reach PyPI
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return subprocess.run(
        ["bash", str(BOOTSTRAP), "lake-bucket-x"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_bootstrap_installs_the_staged_wheel_into_the_venv(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    _tiny_wheel(staged / "fruit_assets-0.0.1-py3-none-any.whl")
    result = _run_bootstrap(tmp_path, staged)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls.log").read_text()
    assert "dnf install -y python3.11 python3.11-pip" in calls
    assert "aws s3 cp s3://lake-bucket-x/bootstrap/" in calls
    marker = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-c", "import fruit_assets; print(fruit_assets.MARKER)"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert marker.stdout.strip() == "from-the-wheel", marker.stderr


def test_bootstrap_refuses_without_exactly_one_wheel(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    result = _run_bootstrap(tmp_path, staged)
    assert result.returncode != 0
    assert "expected exactly one fruit_assets-*.whl under s3://lake-bucket-x/bootstrap/, found 0" in result.stderr
    assert not (tmp_path / "venv").exists()
