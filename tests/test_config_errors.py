"""A bad configuration fails fast, before any Spark work, with a specific and actionable message; paths and URIs
from configuration are validated (no '..', no credentials in URIs, known schemes only).

Each `fruits run` case asserts: exit status 2, the message on stderr, and that nothing started: no Dagster run, no
partition registered, no lake folder, no Spark job (and no SparkContext if there was none).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import dagster as dg
import h5py
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fruit_assets.cli import main
from fruit_assets.lake import LakePathError, check_uri, join, validate_root
from fruit_assets.preflight import ConfigError, check_k_against_images
from fruit_assets.layout import discover
from tests.conftest import PROJECT_DIR, WEIGHTS, copy_images

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def env(tmp_path, fruits_env):
    """A private DAGSTER_HOME and lake; the CLI's FRUITS_* exports are undone after each test."""
    saved = dict(os.environ)
    images = copy_images(tmp_path / "images", classes=["Banana", "Kiwi"], per_class=2)
    (images / "Test" / "Empty class").mkdir()
    yield {**fruits_env, "images": images}
    os.environ.clear()
    os.environ.update(saved)


def _spark_state():
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    return sc, (len(sc.statusTracker().getJobIdsForGroup(None)) if sc is not None else 0)


def run_cli(capsys, env, *args: str, images: str | None = None) -> str:
    """`fruits run` with the test's images, lake and weights unless overridden; returns stderr after checking that
    it failed as a configuration error and started nothing."""
    before = _spark_state()
    argv = ["run", "--images", images or str(env["images"]), "--lake", str(env["lake"]), *args]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert captured.err.startswith("fruits: configuration error: "), captured.err
    assert "Traceback" not in captured.err
    instance = dg.DagsterInstance.get()
    assert instance.get_runs() == [], "a Dagster run was started"
    assert instance.get_dynamic_partitions("fruit_class") == [], "partitions were registered"
    assert not env["lake"].exists(), "the lake was written to"
    assert _spark_state() == before, "Spark work happened"
    return captured.err


# --------------------------------------------------------------------------------------------- images and classes


def test_missing_images_root(capsys, env, tmp_path):
    err = run_cli(capsys, env, "--pca-k", "2", images=str(tmp_path / "nowhere"))
    assert f"Images root '{tmp_path / 'nowhere'}' does not exist (set FRUITS_IMAGES_ROOT or --images)" in err


def test_images_root_that_is_a_file_or_flat(capsys, env, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next((env["images"] / "Test" / "Banana").iterdir()), flat / "a.jpg")
    err = run_cli(capsys, env, "--pca-k", "2", images=str(flat))
    assert "No class folders under" in err and "Expected <images root>/<Split>/<Class name>/" in err
    assert str(flat / "a.jpg") in err


def test_class_asked_for_by_name_without_images(capsys, env):
    err = run_cli(capsys, env, "--pca-k", "2", "--classes", "Banana", "Nope")
    assert "no class folder named 'Nope'" in err and "Known classes: Banana, Kiwi" in err
    err = run_cli(capsys, env, "--pca-k", "2", "--classes", "Banan")
    assert "did you mean 'Banana'?" in err
    err = run_cli(capsys, env, "--pca-k", "2", "--classes", "Empty class")
    assert "class folder 'Empty class' (in Test) holds no image files" in err


# ------------------------------------------------------------------------------------------------------------ k


def test_k_above_the_feature_count(capsys, env):
    err = run_cli(capsys, env, "--pca-k", "1281")
    assert "PCA k=1281 is impossible" in err and "1 <= k <= 1280" in err and "--pca-k" in err
    err = run_cli(capsys, env, "--pca-k", "0")
    assert "PCA k=0 is impossible" in err


def test_k_above_the_image_count(capsys, env):
    err = run_cli(capsys, env, "--pca-k", "5")  # 2 classes x 2 images
    assert "PCA k=5 is larger than the number of images the PCA would be fitted on: at most 4" in err
    assert "Choose k <= 4" in err
    err = run_cli(capsys, env, "--pca-k", "3", "--classes", "Kiwi")
    assert "at most 2 (2 image file(s) in the 1 class(es) of this run)" in err
    err = run_cli(capsys, env, "--pca-k", "3", "--limit-per-class", "1")
    assert "at most 2" in err and "limited to 1 per class" in err


def test_a_class_name_too_long_for_a_lake_folder(capsys, env):
    """A 250-byte folder name is fine in the images root, but not as `fruit_class=<name>` in the lake."""
    long_name = "Banana " + "x" * 243
    shutil.copytree(env["images"] / "Test" / "Banana", env["images"] / "Test" / long_name)
    err = run_cli(capsys, env, "--pca-k", "2")
    assert "1 class folder name(s) too long for the lake: 'Banana xxx" in err and "--classes" in err


def test_a_single_image_is_too_few_for_a_pca(capsys, env):
    err = run_cli(capsys, env, "--pca-k", "1", "--classes", "Kiwi", "--limit-per-class", "1")
    assert "The PCA needs at least 2 images to estimate a covariance, and it would see at most 1" in err


def test_k_bound_counts_rows_of_other_classes_already_in_the_lake(env, tmp_path):
    """The PCA is fitted over every class in the lake, so rows embedded earlier count (read from Parquet footers)."""
    lake = tmp_path / "lake-with-rows"
    part = lake / "mobilenet_features" / "fruit_class=Pêche %22plate%22"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"path": [f"p{i}" for i in range(10)]}), part / "part-0.parquet")
    found = discover(str(env["images"]))
    assert check_k_against_images(14, found, ["Banana", "Kiwi"], None, str(lake)) == 14
    with pytest.raises(ConfigError, match=r"at most 14 .* plus 10 row\(s\) of other classes already in the lake"):
        check_k_against_images(15, found, ["Banana", "Kiwi"], None, str(lake))
    # with --prune, rows of classes without images under the root now are removed first: they do not count
    assert check_k_against_images(4, found, ["Banana", "Kiwi"], None, str(lake), prune=True) == 4
    # re-embedding a class replaces its rows: they are not counted twice
    (lake / "mobilenet_features" / "fruit_class=Kiwi").mkdir()
    pq.write_table(pa.table({"path": ["k"] * 50}), lake / "mobilenet_features" / "fruit_class=Kiwi" / "part-0.parquet")
    assert check_k_against_images(14, found, ["Banana", "Kiwi"], None, str(lake)) == 14


# ------------------------------------------------------------------------------------------------------ weights


def test_missing_weights_file(capsys, env, tmp_path):
    err = run_cli(capsys, env, "--pca-k", "2", "--weights", str(tmp_path / "missing.h5"))
    assert f"MobileNetV2 weights file '{tmp_path / 'missing.h5'}' is missing (no such file)" in err


def test_truncated_weights_file(capsys, env, tmp_path):
    """A partly copied download: HDF5 signature, but cut short."""
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(WEIGHTS.read_bytes()[: WEIGHTS.stat().st_size // 2])
    err = run_cli(capsys, env, "--pca-k", "2", "--weights", str(truncated))
    assert "is an unreadable HDF5 file" in err and "truncated file" in err


def _without_permission_bypass() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so a process
    running as root is held to permission bits like any user (the tests often run as root, which reads anything)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_weights_file_without_read_permission(tmp_path):
    """The real CLI in a subprocess, with a weights file it may not read."""
    images = copy_images(tmp_path / "images", classes=["Banana"], per_class=2)
    weights = tmp_path / "weights.h5"
    shutil.copyfile(WEIGHTS, weights)
    weights.chmod(0)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRUITS_")},
        "DAGSTER_HOME": str(tmp_path), "FRUITS_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "fruit_assets.cli", "run", "--images", str(images), "--lake", str(tmp_path / "lake"),
         "--weights", str(weights), "--pca-k", "1"],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=180,
        preexec_fn=_without_permission_bypass if os.geteuid() == 0 else None,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"MobileNetV2 weights file '{weights}' is unreadable" in proc.stderr
    assert "Permission denied" in proc.stderr
    assert not (tmp_path / "lake").exists()


def test_weights_of_the_wrong_shape(capsys, env, tmp_path):
    """Real weights with one kernel cut to half its filters: valid HDF5, valid Keras layout, wrong shape."""
    bad = tmp_path / "wrong_shape.h5"
    shutil.copyfile(WEIGHTS, bad)
    bad.chmod(0o644)
    with h5py.File(bad, "r+") as f:
        group = f["Conv1"]
        name = group.attrs["weight_names"][0]
        name = name.decode() if isinstance(name, bytes) else name
        kernel = group[name][...]
        del group[name]
        group.create_dataset(name, data=kernel[..., :16])
    err = run_cli(capsys, env, "--pca-k", "2", "--weights", str(bad))
    assert f"MobileNetV2 weights file '{bad}' does not fit MobileNetV2" in err
    assert "Shape mismatch" in err and "(3, 3, 3, 16)" in err


# --------------------------------------------------------------------------------------- paths and URIs (security)


def test_lake_root_with_dot_dot_is_refused_from_flag_and_environment(capsys, env, tmp_path):
    err = run_cli(capsys, env, "--pca-k", "2", "--lake", f"{tmp_path}/lake/../elsewhere")
    assert "'..' segments are not allowed" in err and "FRUITS_LAKE_ROOT or --lake" in err
    os.environ["FRUITS_LAKE_ROOT"] = "s3://fruits-lake/data/../../other"
    code = main(["run", "--images", str(env["images"]), "--pca-k", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "'..' segments are not allowed" in err
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--images", "s3://fruits-images/Test/../../private", "'..' segments are not allowed"),
        ("--weights", "s3://fruits-models/../../../etc/cron.d/x.h5", "'..' segments are not allowed"),
        ("--weights", "s3://fruits-models/", "names no file"),
        ("--lake", "hdfs://namenode/lake", "Unsupported scheme 'hdfs://'"),
        ("--lake", "s3://Not_A_Bucket/lake", "does not name a valid S3 bucket"),
        ("--lake", "s3://fruits-lake/a//b", "empty path segments"),
        ("--lake", "/tmp/fruits-lake[1]", "Spark reads '[', ']' in a path as a file pattern"),
        ("--lake", "s3://fruits-lake/runs,old", "Spark reads ',' in a path as a file pattern or a list of paths"),
        ("--lake", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@fruits-lake/lake", "must not carry credentials"),
        ("--images", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@fruits-images", "must not carry credentials"),
    ],
)
def test_uris_from_configuration_are_validated(capsys, env, flag, value, message):
    args = ["--pca-k", "2", flag, value]
    if flag == "--images":
        err = run_cli(capsys, env, "--pca-k", "2", images=value)
    else:
        err = run_cli(capsys, env, *args)
    assert message in err
    assert SECRET not in err and "AKIAIOSFODNN7EXAMPLE" not in err  # a refused URI's secret is never echoed


@pytest.mark.parametrize(
    "variable", ["FRUITS_MAX_IMAGE_PIXELS", "FRUITS_ENGINE_THREADS", "FRUITS_ARROW_BATCH", "FRUITS_ENGINE_BATCH"]
)
def test_count_settings_below_one_are_refused_naming_their_variable(capsys, env, variable):
    os.environ[variable] = "0"
    err = run_cli(capsys, env, "--pca-k", "2")
    assert f"{variable} must be at least 1, not 0" in err


def test_settings_resources_validate_paths_for_runs_started_outside_the_cli():
    """The UI and sensors build the same resources: a bad path fails there too, naming the setting, not the value."""
    from resources.settings import ImageSource, LakeSettings, MobileNetSettings, PcaSettings

    with pytest.raises(ValueError, match="'..' segments are not allowed") as info:
        LakeSettings(root="/data/lake/../../etc")
    with pytest.raises(ValueError, match="must not carry credentials") as info:
        LakeSettings(root=f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket-x/lake")
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError, match="'..' segments"):
        ImageSource(root="s3://images-bucket/../x")
    with pytest.raises(ValueError, match="'..' segments"):
        MobileNetSettings(weights="s3://models-bucket/a/../../b.h5")
    with pytest.raises(ValueError, match="Unknown engine 'torch'"):
        MobileNetSettings(engine="torch")
    with pytest.raises(ValueError, match="1 <= k <= 1280"):
        PcaSettings(k=5000)
    assert LakeSettings(root="relative/lake").root == os.path.abspath("relative/lake")
    assert LakeSettings(root="s3://fruits-lake/prefix/").root == "s3://fruits-lake/prefix"


def test_lake_paths_stay_under_the_root():
    root = validate_root("s3://fruits-lake/lake")
    assert join(root, "mobilenet_features") == "s3://fruits-lake/lake/mobilenet_features"
    for part in ["..", "../other", "a/../../b", "/etc", "", "."]:
        with pytest.raises(LakePathError):
            join(root, part)
    for bad in ["", "   ", "/a/\x00b", "/a/../b", "file:/a/../b", "s3a://bkt-1/x/../y", "gs://bucket/x"]:
        with pytest.raises(LakePathError):
            check_uri(bad, "lake root")
    assert validate_root("file:///data/lake/") == "file:///data/lake"


def test_each_run_in_a_process_executes_with_its_own_settings(env, tmp_path):
    """`cli.main(["run", ...])` twice in one process (as the tests do) with other flags: the job the second run
    executes is built from the second run's settings, although fruit_assets.definitions was imported with the first
    and Dagster caches the last reconstructed job."""
    import jobs
    from fruit_assets.cli import _fresh_definitions

    def job_settings():
        job = dg.reconstructable(jobs.embed_classes).get_definition()
        value = lambda key: job.resource_defs[key].config_schema.as_field().default_value["root"]  # noqa: E731
        return value("images"), value("lake_settings")

    os.environ.update(FRUITS_IMAGES_ROOT=str(tmp_path / "one"), FRUITS_LAKE_ROOT=str(tmp_path / "lake-one"))
    _fresh_definitions()
    assert job_settings() == (str(tmp_path / "one"), str(tmp_path / "lake-one"))
    os.environ.update(FRUITS_IMAGES_ROOT=str(tmp_path / "two"), FRUITS_LAKE_ROOT=str(tmp_path / "lake-two"))
    _fresh_definitions()
    assert job_settings() == (str(tmp_path / "two"), str(tmp_path / "lake-two"))


# ------------------------------------------------------------------------------------------------ inside assets


def error_chain(error) -> str:
    """A Dagster SerializableErrorInfo's message with those of its causes, as the UI shows them."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause or error.context
    return "\n".join(parts)


def test_asset_run_outside_the_cli_fails_with_a_clear_message(env, tmp_path):
    """raw_images launched directly (as from the UI) against an images root that has gone away."""
    from fruit_assets.assets.ingest import raw_images
    from resources import build_resources

    os.environ["FRUITS_IMAGES_ROOT"] = str(tmp_path / "gone")
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("fruit_class", ["Banana"])
    result = dg.materialize([raw_images], partition_key="Banana", instance=instance, resources=build_resources("local"),
                            raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = error_chain(failure.event_specific_data.error)
    assert f"Images root '{tmp_path / 'gone'}' does not exist (set FRUITS_IMAGES_ROOT or --images)" in message
