"""Entry point of every EMR step: `spark-submit ... --py-files code.zip emr_step_main.py <bucket> <step_run_ref key>`.

dagster-aws's own emr_step_main.py, plus two things it cannot do (see resources/emr.py):
1. apply the step's settings (FRUITS_* / EMR_CLUSTER_ID, staged as fruits_step_context.json beside the pickled step)
   before any project code is imported, since the step rebuilds its resources from them;
2. give the step's ephemeral Dagster instance the facts of the launching instance that this graph reads: the
   fruit_class partitions, in order (runs are partition ranges), and which partitions are materialized;
3. when the step fails outside Dagster's step execution (no STEP_FAILURE event can carry it), leave the traceback
   as step_error.txt beside the events, for the launcher to put in the run's error.
Events go back exactly as in dagster-aws: all of them, rewritten to events.pkl on S3 as they come.

Uploaded by the launcher as a plain file and run by the cluster's Python, so it imports nothing from this project.
"""

import io
import json
import os
import pickle
import posixpath
import re
import sys
import traceback
from queue import Queue
from threading import Thread

import boto3
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.execution.plan.external_step import PICKLED_EVENTS_FILE_NAME, run_step_from_ref
from dagster._serdes import serialize_value
from dagster_aws.emr.emr_step_main import DONE, event_writing_loop

CONTEXT_FILE = "fruits_step_context.json"
ERROR_FILE = "step_error.txt"  # written when the step fails before or outside Dagster's own step execution
ENV_NAME = re.compile(r"^(FRUITS_[A-Z0-9_]+|EMR_CLUSTER_ID)$")


def apply_env(env: dict) -> None:
    bad = sorted(k for k in env if not ENV_NAME.match(k))
    if bad:
        raise ValueError(f"{CONTEXT_FILE} may only set FRUITS_* and EMR_CLUSTER_ID, not {bad}")
    os.environ.update({k: str(v) for k, v in env.items()})


def prepared_instance(context: dict) -> DagsterInstance:
    instance = DagsterInstance.ephemeral()
    for name, keys in context.get("dynamic_partitions", {}).items():
        if keys:
            instance.add_dynamic_partitions(name, keys)
    for entry in context.get("materialized_partitions", []):
        key = AssetKey(entry["asset_key"])
        for partition in entry["partitions"]:
            # Runless events: before the run's event listener exists, and under no run id, so never sent back.
            instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=partition))
    return instance


def main(bucket: str, step_run_ref_key: str) -> None:
    s3 = boto3.client("s3")
    step_dir = posixpath.dirname(step_run_ref_key)
    try:
        run(s3, bucket, step_dir, step_run_ref_key)
    except BaseException:
        # An error outside the Dagster step (settings, unpickling, loading the code) has no STEP_FAILURE event to
        # travel in, and EMR's own failure reason rarely names it: leave it beside the events for the launcher.
        s3.put_object(
            Body=traceback.format_exc()[-20000:].encode(), Bucket=bucket, Key=f"{step_dir}/{ERROR_FILE}",
            ServerSideEncryption="AES256",
        )
        raise


def run(s3, bucket: str, step_dir: str, step_run_ref_key: str) -> None:
    context = json.loads(s3.get_object(Bucket=bucket, Key=f"{step_dir}/{CONTEXT_FILE}")["Body"].read())
    apply_env(context.get("env", {}))
    step_run_ref = pickle.loads(s3.get_object(Bucket=bucket, Key=step_run_ref_key)["Body"].read())

    def put_events(events):
        body = io.BytesIO(pickle.dumps(serialize_value(events)))
        s3.put_object(
            Body=body, Bucket=bucket, Key=f"{step_dir}/{PICKLED_EVENTS_FILE_NAME}", ServerSideEncryption="AES256"
        )

    events_queue: Queue = Queue()
    writer = Thread(target=event_writing_loop, kwargs={"events_queue": events_queue, "put_events_fn": put_events})
    writer.start()
    try:
        instance = prepared_instance(context)
        instance.add_event_listener(step_run_ref.run_id, events_queue.put)
        list(run_step_from_ref(step_run_ref, instance))
    finally:
        events_queue.put(DONE)
        writer.join()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
