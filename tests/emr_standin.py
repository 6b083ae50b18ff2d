"""The cluster side of EMR, for tests against moto on loopback: runs each added step's own command locally.

moto's EMR accepts `add_job_flow_steps` and reports step states, but never runs or advances a step. This stand-in
does what the cluster would: a background thread watches the given clusters in moto's EMR backends, and for each
PENDING step (in order, one at a time, as EMR's default StepConcurrencyLevel of 1 does):
- marks it RUNNING, with a start time (EMR's step timeline, which the launcher reads for duration and cost);
- downloads the staged s3:// files the command names (entry script, --py-files) from moto's S3;
- rewrites only what a laptop cannot be: /usr/lib/spark/bin/spark-submit -> this venv's spark-submit, master yarn
  -> local[N], deploy mode -> client, s3:// files -> the downloaded copies; every other argument is kept;
- runs it with the environment a cluster node has (AWS endpoint and credentials standing in for the instance
  profile, PYSPARK_PYTHON as the template's spark-env sets it) and nothing of the test's FRUITS_* settings, so the
  step only knows what the launcher staged;
- marks it COMPLETED on exit code 0, else FAILED with what EMR would say ("Unknown Error." and where the log is; the
  output stays in the record for the test), and FAILED on any exception of its own: a step left PENDING/RUNNING
  would make the launcher poll forever.
`stop()` (and the deadline) fail whatever is still pending, for the same reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import boto3

EMR_SPARK_SUBMIT = "/usr/lib/spark/bin/spark-submit"
LOCAL_SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")
# What a cluster node's environment has; everything else (FRUITS_*, EMR_CLUSTER_ID, DAGSTER_HOME, PYTHONPATH) is not
# passed on.
NODE_ENV = ("PATH", "HOME", "JAVA_HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "SPARK_LOCAL_IP")
NODE_ENV_PREFIXES = ("AWS_",)
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass
class StepRecord:
    cluster_id: str
    step_id: str
    args: list[str]
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    state: str = "PENDING"
    seconds: float = 0.0
    output_tail: str = ""
    log_path: str = ""


class EmrStandIn:
    def __init__(
        self,
        cluster_ids: list[str],
        workdir: str | os.PathLike[str],
        master: str = "local[2]",
        step_timeout: float = 600,
        deadline_seconds: float = 1800,
        poll: float = 0.25,
    ):
        self.cluster_ids = set(cluster_ids)
        self.workdir = Path(workdir)
        self.master = master
        self.step_timeout = step_timeout
        self.deadline = time.monotonic() + deadline_seconds
        self.poll = poll
        self.records: list[StepRecord] = []
        self._handled: set[str] = set()
        self._fail_next: list[str] = []
        self._replace_ref: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="emr-standin", daemon=True)
        self.env = self._node_env()

    # -- control ------------------------------------------------------------------------------

    def __enter__(self) -> EmrStandIn:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.step_timeout + 30)
        self._fail_all_open("stand-in stopped before running this step")

    def watch(self, cluster_id: str) -> None:
        self.cluster_ids.add(cluster_id)

    def fail_next_step(self, reason: str) -> None:
        """Emulate a cluster-side failure (node lost, spark-submit killed): FAILED without running the command."""
        self._fail_next.append(reason)

    def replace_next_step_run_ref(self, data: bytes) -> None:
        """Emulate a cluster that cannot load the staged step (e.g. another Dagster version in its bootstrap wheel):
        the next step's step_run_ref.pkl is overwritten in S3 before its command runs."""
        self._replace_ref.append(data)

    # -- the loop -----------------------------------------------------------------------------

    @staticmethod
    def _node_env() -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k in NODE_ENV or k in PROXY_ENV or k.startswith(NODE_ENV_PREFIXES)
        }
        env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable  # the template's spark-env export
        return env

    def _cluster_steps(self):
        from moto.emr.models import emr_backends

        for account in list(emr_backends.keys()):
            for region in list(emr_backends[account].keys()):
                backend = emr_backends[account][region]
                for cluster_id, cluster in list(backend.clusters.items()):
                    if cluster_id in self.cluster_ids:
                        for step in list(cluster.steps):
                            yield cluster_id, step

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if time.monotonic() > self.deadline:
                    self._fail_all_open("stand-in deadline passed")
                    return
                for cluster_id, step in self._cluster_steps():
                    # moto files the first step of an idle cluster as RUNNING although nothing runs it
                    if step.id not in self._handled and step.state in ("PENDING", "RUNNING"):
                        self._handled.add(step.id)
                        self._run(cluster_id, step)
                        break  # one step at a time, then look again from the start (order of addition)
            except Exception:  # noqa: BLE001  the watcher must survive anything; each step is failed in _run
                traceback.print_exc()
            self._stop.wait(self.poll)

    def _fail_all_open(self, reason: str) -> None:
        for _, step in self._cluster_steps():
            if step.state in ("PENDING", "RUNNING"):
                self._finish(step, "FAILED", reason)

    @staticmethod
    def _finish(step, state: str, reason: str | None = None) -> None:
        from moto.core.utils import utcnow

        step.end_date_time = utcnow()
        if reason:
            step.last_state_change_reason = reason
        step.state = state

    def _run(self, cluster_id: str, step) -> None:
        record = StepRecord(cluster_id=cluster_id, step_id=step.id, args=list(step.args))
        self.records.append(record)
        started = time.monotonic()
        try:
            step.start()
            step.state = record.state = "RUNNING"
            if self._fail_next:
                raise StepFailed(self._fail_next.pop(0))
            step_dir = self.workdir / step.id
            step_dir.mkdir(parents=True)
            record.command = self.local_command(record.args, step_dir)
            if self._replace_ref:
                boto3.client("s3").put_object(Bucket=record.args[-2], Key=record.args[-1], Body=self._replace_ref.pop(0))
            record.log_path = str(step_dir / "step.log")
            with open(record.log_path, "wb") as out:
                proc = subprocess.run(
                    record.command, env=self.env, cwd=step_dir, stdout=out, stderr=subprocess.STDOUT,
                    timeout=self.step_timeout,
                )
            record.returncode = proc.returncode
            record.output_tail = _tail(record.log_path)
            if proc.returncode != 0:  # what EMR says (FailureDetails: "Unknown Error." and the log file), no more
                raise StepFailed(f"Unknown Error. (spark-submit exited with code {proc.returncode}; log: {record.log_path})")
            record.state = "COMPLETED"
            self._finish(step, "COMPLETED")
        except BaseException as e:  # noqa: BLE001  ALWAYS leave the step FAILED, never PENDING/RUNNING
            record.state = "FAILED"
            if record.log_path and not record.output_tail and Path(record.log_path).exists():
                record.output_tail = _tail(record.log_path)
            reason = str(e) if isinstance(e, StepFailed) else f"stand-in error: {type(e).__name__}: {e}"
            self._finish(step, "FAILED", reason)
        finally:
            record.seconds = time.monotonic() - started

    def local_command(self, args: list[str], step_dir: Path) -> list[str]:
        """The step's own spark-submit command, with only the cluster-specific parts made local."""
        if not args or args[0] != EMR_SPARK_SUBMIT:
            raise StepFailed(f"not a spark-submit step: {args[:1]}")
        s3 = boto3.client("s3")

        def local(uri: str) -> str:
            bucket, _, key = uri[len("s3://"):].partition("/")
            target = step_dir / "staged" / Path(key).name
            target.parent.mkdir(exist_ok=True)
            s3.download_file(bucket, key, str(target))
            return str(target)

        out = [LOCAL_SPARK_SUBMIT]
        i = 1
        while i < len(args):
            arg = args[i]
            if arg == "--master":
                out += ["--master", self.master]
                i += 2
            elif arg == "--deploy-mode":
                out += ["--deploy-mode", "client"]
                i += 2
            elif arg == "--conf":
                name, _, value = args[i + 1].partition("=")
                value = {"spark.master": self.master, "spark.submit.deployMode": "client"}.get(name, value)
                out += ["--conf", f"{name}={value}"]
                i += 2
            elif arg == "--py-files":
                out += ["--py-files", ",".join(local(u) if u.startswith("s3://") else u for u in args[i + 1].split(","))]
                i += 2
            elif arg.startswith("s3://"):  # the application script; what follows are its own arguments
                out += [local(arg), *args[i + 1 :]]
                break
            elif arg.startswith("--"):
                raise StepFailed(f"spark-submit option the stand-in does not know: {arg}")
            else:
                raise StepFailed(f"unexpected spark-submit argument before the script: {arg}")
        return out


class StepFailed(Exception):
    pass


def _tail(path: str, lines: int = 40) -> str:
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])
