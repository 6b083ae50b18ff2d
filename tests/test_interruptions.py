"""Interruptions and faults: a killed run loses nothing committed, readers never see half-written data, the next run
completes and is consistent; Spark retries a transient task failure, and a persistent one fails the asset with its
cause visible.

Two halves:
- The lake on its own (fruit_assets/lake.py, real Spark, cheap): each state a kill can leave, at each step of a
  write, is put on disk as the kill would leave it (a write cut short; a swap stopped between its two renames; a
  commit whose cleanup never ran; Spark's own staging folders), then read and written again. Plus a write that fails
  through a real fault (its source files deleted under it), and leftovers of a writer that is still alive.
- The whole graph, one lifecycle on one lake (`lifecycle()`, shared with test_reruns.py): a committed `fruits run`;
  a `fruits run` subprocess killed with SIGKILL (its whole process group: driver, JVM, Python workers) while Spark
  writes the lake; a run that must clean up and complete while one of its Spark Python workers is killed mid-task (a
  transient fault, which Spark retries); a re-run; and a run whose workers are killed every time (a persistent fault:
  the asset fails, and Dagster and the CLI show the cause).

Faults are real: processes killed by signal, files deleted. Only processes this test started (its own descendants,
found through /proc, or the process group it created) are ever signalled.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from fruit_assets import lake
from fruit_assets.cli import main
from fruit_assets.prune import CLASS_DATASETS
from tests.conftest import PROJECT_DIR, copy_images
from tests.lake_tables import read
from tests.test_bad_input import _cmdline, spark_python_workers

A, B = "Banana", "Kiwi"
# How Spark reports a Python worker killed under a task: on reading its output, or on writing its input.
WORKER_DEATH = ("Python worker exited unexpectedly (crashed)", "Connection reset", "Broken pipe")
PARQUET_DATASETS = ["raw_images", "labelled_images", "mobilenet_features", "image_errors", "pca_features",
                    "pca_explained_variance", "model_info"]


# ------------------------------------------------------------------------------------------------- helpers


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def tag_of(pid: int, ms: int | None = None) -> str:
    """A writer tag as lake.py makes them (<ms>-<host>-<pid>-<random>), for a given process."""
    return f"{int(time.time() * 1000) if ms is None else ms:013x}-{lake._HOST}-{pid}-0badf00d"


def pyarrow_rows(path) -> list[tuple]:
    """What a reader that is not Spark (pyarrow, hive partitions, hidden names ignored) sees at `path`."""
    table = read(path.parent, path.name)
    return sorted(tuple(r.values()) for r in table.to_pylist())


def spark_rows(spark, path, classes=None) -> list[tuple]:
    df = lake.read(spark, str(path), classes)
    return sorted(tuple(r) for r in df.select(*sorted(df.columns)).collect())


def table_v(spark, version: int, n: int = 4):
    return spark.createDataFrame([(f"p{i}", version) for i in range(n)], "path string, version int")


def classes_v(spark, version: int, classes=(A, B), n: int = 3):
    rows = [(f"{c}/{i}", version, c) for c in classes for i in range(n)]
    return spark.createDataFrame(rows, "path string, version int, fruit_class string")


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(path.name + "."))


# ------------------------------------------------------------------------------ the lake: whole datasets


def test_kill_between_the_two_renames_of_a_replace_restores_the_previous_version(spark, tmp_path):
    path = tmp_path / "model_info"
    lake.write_table(table_v(spark, 1), str(path))
    committed = pyarrow_rows(path)
    # The next replace wrote version 2 completely, renamed the dataset aside, and was killed before renaming the
    # new version in: the dataset is missing, its previous version is parked, the new one sits in its temp folder.
    tag = tag_of(dead_pid())
    os.rename(path, f"{path}.__old-{tag}")
    table_v(spark, 2).write.parquet(f"{path}.__writing-{tag}")
    assert not path.exists()  # readers meet no dataset at all, never a part of one

    assert spark_rows(spark, path) == sorted((f"p{i}", 1) for i in range(4))  # the read restores version 1
    assert pyarrow_rows(path) == committed and siblings(path) == []
    lake.write_table(table_v(spark, 3), str(path))
    assert {r[1] for r in pyarrow_rows(path)} == {3} and siblings(path) == []


def test_kill_after_the_commit_before_cleanup_keeps_the_new_version(spark, tmp_path):
    path = tmp_path / "pca_features"
    lake.write_table(table_v(spark, 1), str(path))
    tag = tag_of(dead_pid())
    os.rename(path, f"{path}.__old-{tag}")
    table_v(spark, 2).write.parquet(str(path))  # the new version was renamed in; deleting the old one never ran
    lake.write_text(spark, f"{path}/_schema.json", table_v(spark, 2).schema.json())
    assert {r[1] for r in spark_rows(spark, path)} == {2}
    assert siblings(path) == []


def test_kill_while_spark_writes_leaves_the_committed_version_alone(spark, tmp_path):
    path = tmp_path / "pca_explained_variance"
    lake.write_table(table_v(spark, 1), str(path))
    committed = pyarrow_rows(path)
    tmp = Path(f"{path}.__writing-{tag_of(dead_pid())}")
    (tmp / "_temporary" / "0" / "task_1").mkdir(parents=True)  # a Spark job cut short: task output, no commit
    (tmp / "_temporary" / "0" / "task_1" / "part-00000.parquet").write_bytes(b"PAR1 half a file")
    assert pyarrow_rows(path) == committed
    lake.write_table(table_v(spark, 2), str(path))  # the next write cleans up and replaces
    assert {r[1] for r in pyarrow_rows(path)} == {2} and siblings(path) == []


# ------------------------------------------------------------------------------ the lake: class datasets


def test_kill_in_the_middle_of_a_class_swap_restores_that_class(spark, tmp_path):
    path = tmp_path / "mobilenet_features"
    lake.write_classes(classes_v(spark, 1), str(path), [A, B])
    # The next write of A and B (version 2) completed in its temp folder, moved A's committed folder aside and was
    # killed before moving the new A in: A is missing from the dataset.
    tag = tag_of(dead_pid())
    tmp, aside = Path(f"{path}.__writing-{tag}"), Path(f"{path}.__oldparts-{tag}")
    classes_v(spark, 2).repartition(1).write.partitionBy("fruit_class").parquet(str(tmp))
    aside.mkdir()
    os.rename(path / f"fruit_class={A}", aside / f"fruit_class={A}")
    assert {r[2] for r in pyarrow_rows(path)} == {B}

    assert spark_rows(spark, path, [A]) == sorted((A, f"{A}/{i}", 1) for i in range(3))  # restored on read
    assert sorted(pyarrow_rows(path)) == sorted((f"{c}/{i}", 1, c) for c in (A, B) for i in range(3))
    assert siblings(path) == []
    lake.write_classes(classes_v(spark, 3, classes=[A]), str(path), [A])  # replaces A only
    assert sorted(pyarrow_rows(path)) == sorted([(f"{A}/{i}", 3, A) for i in range(3)] + [(f"{B}/{i}", 1, B) for i in range(3)])
    assert siblings(path) == []


def test_spark_staging_leftovers_are_invisible_and_cleaned(spark, tmp_path):
    """What a killed Spark dynamic-partition-overwrite (or any direct write) leaves inside a dataset."""
    path = tmp_path / "raw_images"
    lake.write_classes(classes_v(spark, 1), str(path), [A, B])
    committed = pyarrow_rows(path)
    part = next((path / f"fruit_class={A}").glob("*.parquet"))
    staged = path / ".spark-staging-3f2a" / f"fruit_class={A}"
    staged.mkdir(parents=True)
    shutil.copy(part, staged / part.name)
    (path / "_temporary" / "0").mkdir(parents=True)
    shutil.copy(part, path / "_temporary" / "0" / part.name)
    assert pyarrow_rows(path) == committed
    assert spark_rows(spark, path) == sorted((c, f"{c}/{i}", 1) for c in (A, B) for i in range(3))
    assert not (path / ".spark-staging-3f2a").exists() and not (path / "_temporary").exists()


def test_a_write_failing_on_a_real_fault_leaves_the_committed_classes(spark, tmp_path):
    """The source files of the DataFrame being written are deleted while Spark plans the write: its tasks fail with
    FileNotFoundException (after Spark's retries), the write raises, and the dataset keeps its committed classes."""
    path = tmp_path / "labelled_images"
    lake.write_classes(classes_v(spark, 1), str(path), [A, B])
    committed = pyarrow_rows(path)
    source = tmp_path / "source"
    classes_v(spark, 2).write.parquet(str(source))
    doomed = spark.read.parquet(str(source))
    shutil.rmtree(source)
    with pytest.raises(Exception, match="(?s)FileNotFound|does not exist"):
        lake.write_classes(doomed, str(path), [A, B])
    assert pyarrow_rows(path) == committed and siblings(path) == []


def test_rows_of_unnamed_classes_are_refused_and_nothing_changes(spark, tmp_path):
    path = tmp_path / "image_errors"
    lake.write_classes(classes_v(spark, 1), str(path), [A, B])
    committed = pyarrow_rows(path)
    with pytest.raises(ValueError, match="classes other than"):
        lake.write_classes(classes_v(spark, 2, classes=[A, "Cherry"]), str(path), [A])
    assert pyarrow_rows(path) == committed and siblings(path) == []


def test_leftovers_of_a_live_writer_are_left_alone(spark, tmp_path):
    path = tmp_path / "pca_model"
    lake.write_table(table_v(spark, 1), str(path))
    writer = subprocess.Popen(["sleep", "60"])  # stands for another run, still writing on this host
    try:
        live = Path(f"{path}.__writing-{tag_of(writer.pid)}")
        live.mkdir()
        reused = Path(f"{path}.__writing-{tag_of(writer.pid, ms=1)}")  # same pid, but tagged before it started
        reused.mkdir()
        lake.recover(spark, str(path))
        assert live.exists() and not reused.exists()
    finally:
        writer.kill()
        writer.wait()
    lake.recover(spark, str(path))
    assert not live.exists() and {r[1] for r in pyarrow_rows(path)} == {1}


def test_a_read_while_a_write_is_under_way_sees_the_committed_version_and_spares_the_write(spark, tmp_path):
    path = tmp_path / "pca_features"
    lake.write_table(table_v(spark, 1), str(path))

    def write(tmp: str) -> None:
        table_v(spark, 2).write.parquet(tmp)
        assert {r[1] for r in spark_rows(spark, path)} == {1}  # a reader meanwhile: the committed version
        assert Path(tmp).exists()  # and its recovery did not take this write for an interrupted one

    lake.replace(str(path), spark, write)
    assert {r[1] for r in pyarrow_rows(path)} == {2} and siblings(path) == []


def test_an_unreadable_schema_file_falls_back_to_the_parquet_footers(spark, tmp_path):
    path = tmp_path / "model_info"
    lake.write_table(table_v(spark, 1), str(path))
    (path / "_schema.json").write_text('{"fields": [{"name": "pa')  # cut short (not by our writes: they are atomic)
    assert spark_rows(spark, path) == sorted((f"p{i}", 1) for i in range(4))


# ------------------------------------------------------------------------------------------ the whole graph


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return -1


class WorkerKiller(threading.Thread):
    """Kills (SIGKILL) Spark Python workers of this process while they compute, like the OOM killer would: once
    (`times=1`), or every time one computes (`times=None`)."""

    def __init__(self, times: int | None):
        super().__init__(daemon=True)
        self.times, self.killed = times, []
        self.stop = threading.Event()

    def run(self) -> None:
        ticks: dict[int, int] = {}
        while not self.stop.is_set() and (self.times is None or len(self.killed) < self.times):
            for pid in spark_python_workers():
                now = _cpu_ticks(pid)
                if pid in ticks and now > ticks[pid]:  # burning CPU: running a task (idle workers sleep)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    break
                ticks[pid] = now
            time.sleep(0.02)


def failed_task_attempts(spark) -> int:
    tracker = spark.sparkContext.statusTracker()
    total = 0
    for job in tracker.getJobIdsForGroup(None):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else []:
            stage_info = tracker.getStageInfo(stage)
            total += stage_info.numFailedTasks if stage_info else 0
    return total


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def writing_now(lake_dir: Path, dataset: str) -> bool:
    """Whether Spark is writing task output into a temporary sibling of `dataset` right now."""
    return any(
        (tmp / "_temporary").exists() for tmp in lake_dir.glob(f"{dataset}.__writing-*")
    )


def snapshot(lake_dir: Path) -> dict:
    """Every dataset of the lake as pandas, sorted by path (the CSV export as text lines)."""
    out = {}
    for name in PARQUET_DATASETS:
        df = read(lake_dir, name).to_pandas()
        key = "path" if "path" in df else "component" if "component" in df else None
        out[name] = df.sort_values(key).reset_index(drop=True) if key else df
    out["pca_features_csv"] = sorted(
        line for f in (lake_dir / "pca_features_csv").glob("*.csv") for line in f.read_text().splitlines()[1:]
    )
    return out


def leftovers(lake_dir: Path) -> list[str]:
    """Anything an interrupted or unfinished write would leave: our temporary siblings, Spark's staging folders."""
    return sorted(
        str(p.relative_to(lake_dir)) for p in lake_dir.rglob("*")
        if ".__writing-" in p.name or ".__old" in p.name or p.name.startswith(".spark-staging") or p.name == "_temporary"
    )


def check_results(instance) -> dict[str, bool | None]:
    """Each asset check's latest result (None if its latest execution has no result yet)."""
    out = {}
    for asset, check in [("labelled_images", "labels_present"), ("mobilenet_features", "counts_are_conserved"),
                         ("mobilenet_features", "features_are_finite_1280")]:
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        out[check] = getattr(record.event.dagster_event.event_specific_data, "passed", None) if record else None
    return out


_LIFECYCLE: dict = {}


def lifecycle(tmp_path_factory, weights, engine_cache, spark) -> dict:
    """One lake and one Dagster instance through five `fruits run`s, shared by this module and test_reruns.py
    (computed once per session: whole-graph runs are the expensive part of the suite).

    1. `--classes A`: committed.
    2. `--classes B` in a subprocess, killed with SIGKILL (its whole process group) while Spark writes raw_images.
    3. `--classes B` again, in this process, while one of its Spark Python workers is killed mid-task.
    4. `--classes A` again: after A, B, A the lake must hold A and B once each, A as after step 1.
    5. `--classes B` with every Python worker killed as soon as it computes: the run must fail, naming the cause.
    """
    if "state" in _LIFECYCLE:
        return _LIFECYCLE["state"]
    if "error" in _LIFECYCLE:
        raise _LIFECYCLE["error"]
    base = tmp_path_factory.mktemp("lifecycle")
    images = copy_images(base / "images", classes=[A, B], per_class=3)
    saved = dict(os.environ)
    os.environ.update(DAGSTER_HOME=str(base), FRUITS_CACHE_DIR=str(engine_cache), FRUITS_DEPLOYMENT="local")
    lake_dir = base / "lake"
    args = ["run", "--images", str(images), "--lake", str(lake_dir), "--weights", str(weights), "--pca-k", "2"]
    state: dict = {"lake": lake_dir, "images": images, "codes": {}}
    try:
        state["codes"]["A"] = main([*args, "--classes", A])
        state["committed_files"] = file_digests(lake_dir)
        state["committed"] = snapshot(lake_dir)
        state["committed_rows"] = {name: pyarrow_rows(lake_dir / name) for name in PARQUET_DATASETS}

        log_path = base / "killed_run.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fruit_assets.cli", *args, "--classes", B], cwd=PROJECT_DIR,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 400
            while proc.poll() is None and time.monotonic() < deadline and not writing_now(lake_dir, "raw_images"):
                time.sleep(0.005)
            state["killed_mid_write"] = proc.poll() is None and writing_now(lake_dir, "raw_images")
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and its Python workers, all at once
            proc.wait()
        state["killed_pgid"] = proc.pid
        state["killed_returncode"] = proc.returncode
        state["killed_log"] = log_path.read_text()
        state["after_kill_files"] = file_digests(lake_dir)
        state["after_kill_entries"] = sorted(p.name for p in lake_dir.iterdir())
        state["after_kill_rows"] = {name: pyarrow_rows(lake_dir / name) for name in PARQUET_DATASETS}

        failures_before = failed_task_attempts(spark)
        killer = WorkerKiller(times=1)
        killer.start()
        state["codes"]["B"] = main([*args, "--classes", B])
        killer.stop.set()
        killer.join()
        state["transient_kills"] = killer.killed
        state["failed_attempts_during_recovery"] = failed_task_attempts(spark) - failures_before
        state["recovered"] = snapshot(lake_dir)
        state["leftovers_after_recovery"] = leftovers(lake_dir)
        state["checks_after_recovery"] = check_results(dg.DagsterInstance.get())

        state["codes"]["A again"] = main([*args, "--classes", A])
        state["again"] = snapshot(lake_dir)
        state["leftovers_after_again"] = leftovers(lake_dir)

        out = io.StringIO()
        killer = WorkerKiller(times=None)
        killer.start()
        with contextlib.redirect_stdout(out):
            state["codes"]["B persistent fault"] = main([*args, "--classes", B])
        killer.stop.set()
        killer.join()
        state["persistent_kills"] = killer.killed
        state["persistent_out"] = out.getvalue()
        state["after_failure"] = snapshot(lake_dir)
        state["leftovers_after_failure"] = leftovers(lake_dir)
        state["instance"] = dg.DagsterInstance.get()
        state["paths"] = {c: sorted(f"file:{p}" for p in (images / "Test" / c).iterdir()) for c in (A, B)}
    except BaseException as exc:
        _LIFECYCLE["error"] = exc
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _LIFECYCLE["state"] = state
    return state


@pytest.fixture(scope="module")
def graph(tmp_path_factory, weights, engine_cache, spark):
    return lifecycle(tmp_path_factory, weights, engine_cache, spark)


@pytest.mark.slow
def test_the_committed_run_succeeded(graph):
    assert graph["codes"]["A"] == 0
    assert len(graph["committed"]["mobilenet_features"]) == 3


@pytest.mark.slow
def test_the_run_was_killed_while_spark_wrote_the_lake(graph):
    assert graph["killed_mid_write"], "the kill did not land while raw_images was being written:\n" + graph["killed_log"][-3000:]
    assert graph["killed_returncode"] == -signal.SIGKILL
    unfinished = [name for name in graph["after_kill_entries"] if name.startswith("raw_images.__writing-")]
    assert unfinished, f"no unfinished write was left behind: {graph['after_kill_entries']}"


@pytest.mark.slow
def test_committed_outputs_are_byte_for_byte_intact_after_the_kill(graph):
    committed, after = graph["committed_files"], graph["after_kill_files"]
    unfinished = {name for name in after if ".__writing-" in name.split("/")[0]}
    assert {name: digest for name, digest in after.items() if name not in unfinished} == committed


@pytest.mark.slow
def test_readers_see_the_committed_rows_after_the_kill(graph):
    assert graph["after_kill_rows"] == graph["committed_rows"]
    assert {row[-1] for row in graph["after_kill_rows"]["raw_images"]} == {A}  # nothing of the killed run's B


@pytest.mark.slow
def test_the_next_run_completes_and_is_consistent(graph):
    assert graph["codes"]["B"] == 0
    recovered, paths = graph["recovered"], graph["paths"]
    expected = sorted(paths[A] + paths[B])
    for name in ["raw_images", "labelled_images", "mobilenet_features", "pca_features"]:
        assert list(recovered[name]["path"]) == expected, name
    assert recovered["mobilenet_features"].groupby("fruit_class").size().to_dict() == {A: 3, B: 3}
    assert len(recovered["pca_features_csv"]) == 6
    assert graph["leftovers_after_recovery"] == []
    checks = graph["checks_after_recovery"]
    assert checks["counts_are_conserved"] and checks["features_are_finite_1280"] and checks["labels_present"], checks


@pytest.mark.slow
def test_a_transient_worker_crash_is_retried_by_spark(graph):
    assert len(graph["transient_kills"]) == 1, "no Python worker was caught computing"
    assert graph["failed_attempts_during_recovery"] >= 1  # Spark saw the task fail ...
    assert graph["codes"]["B"] == 0  # ... retried it, and the run succeeded with every image embedded


@pytest.mark.slow
def test_a_persistent_worker_crash_fails_the_asset_with_its_cause_visible(graph):
    assert graph["codes"]["B persistent fault"] == 1
    assert len(graph["persistent_kills"]) >= 4  # spark.task.maxFailures attempts, each killed
    instance = graph["instance"]
    (run,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    assert [e.step_key for e in failures] == ["mobilenet_features_and_errors"]
    chain, error = [], failures[0].dagster_event.event_specific_data.error
    while error is not None:
        chain.append(error.message)
        error = error.cause or error.context
    text = "\n".join(chain)
    assert "Job aborted due to stage failure" in text and "failed 4 times" in text, text[:3000]
    assert any(cause in text for cause in WORKER_DEATH), text[:3000]
    out = graph["persistent_out"]
    assert "FAILED: mobilenet_features_and_errors" in out
    (line,) = [ln for ln in out.splitlines() if "caused by:" in ln]
    assert "failed 4 times" in line and any(cause in line for cause in WORKER_DEATH), line


@pytest.mark.slow
def test_the_failed_run_left_every_dataset_as_committed(graph):
    before, after = graph["again"], graph["after_failure"]
    for name in [*CLASS_DATASETS, "pca_features"]:
        columns = [c for c in before[name].columns if c != "features"]
        assert before[name][columns].equals(after[name][columns]), name
    assert graph["leftovers_after_failure"] == []


@pytest.mark.slow
def test_no_process_of_the_killed_run_survives(graph):
    """Everything of the killed run went with it: no driver, JVM or Python worker of its process group remains."""
    survivors = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) == graph["killed_pgid"]:
                    survivors.append((entry, _cmdline(int(entry))[:80]))
    assert survivors == []
