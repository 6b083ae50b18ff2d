"""fruit_assets.engines against the real MobileNetV2 weights and real Fruits-360 images.

Nothing here skips: without the shared weights file the tests fail and say why.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fruit_assets import engines
from fruit_assets.engines import (
    EMBEDDING_DIM,
    ENGINES,
    EngineArtifact,
    WeightsError,
    build_keras_model,
    load_embedder,
    prepare_artifact,
    sha256_file,
)

SHARED = Path(os.environ.get("FRUIT_ASSETS_SHARED", "/work/shared"))
WEIGHTS = SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGES = SHARED / "data" / "fruits-360" / "Test"
N_IMAGES = 16
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore:Skipping nested container")


@pytest.fixture(scope="module")
def weights() -> Path:
    assert WEIGHTS.is_file(), (
        f"the real MobileNetV2 weights are missing: {WEIGHTS} (set FRUIT_ASSETS_SHARED to the folder holding "
        "models/ and data/); these tests do not run on random weights"
    )
    return WEIGHTS


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """16 real images from 16 classes, preprocessed exactly as keras-applications documents."""
    import keras

    classes = sorted(p for p in IMAGES.iterdir() if p.is_dir()) if IMAGES.is_dir() else []
    assert len(classes) >= N_IMAGES, f"need >= {N_IMAGES} class folders of real images under {IMAGES}"
    step = len(classes) // N_IMAGES
    files = [sorted(c.glob("*.jpg"))[0] for c in classes[::step][:N_IMAGES]]
    batch = np.stack(
        [
            keras.utils.img_to_array(keras.utils.load_img(f, target_size=(224, 224), interpolation="bilinear"))
            for f in files
        ]
    )
    x = keras.applications.mobilenet_v2.preprocess_input(batch).astype(np.float32)
    assert x.shape == (N_IMAGES, 224, 224, 3) and x.min() >= -1.0 and x.max() <= 1.0
    return x


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module")
def onnx_artifact(weights, onnx_cache) -> EngineArtifact:
    t0 = time.perf_counter()
    artifact = prepare_artifact("onnx", weights, onnx_cache)
    print(f"\ncold prepare_artifact('onnx') incl. conversion: {time.perf_counter() - t0:.1f} s")
    return artifact


@pytest.fixture(scope="module")
def tf_artifact(weights, tmp_path_factory) -> EngineArtifact:
    return prepare_artifact("tensorflow", weights, tmp_path_factory.mktemp("unused_cache"))


def _check_embeddings(y: np.ndarray, n: int) -> None:
    assert y.shape == (n, EMBEDDING_DIM)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()


# ----------------------------------------------------------------------------------------- faithfulness


def test_onnx_matches_tensorflow(onnx_artifact, tf_artifact, images, record_property):
    assert onnx_artifact.engine == "onnx" and tf_artifact.engine == "tensorflow"
    assert onnx_artifact.weights_sha256 == tf_artifact.weights_sha256
    y_onnx = load_embedder(onnx_artifact, threads=1)(images)
    y_tf = load_embedder(tf_artifact, threads=1)(images)
    _check_embeddings(y_onnx, N_IMAGES)
    _check_embeddings(y_tf, N_IMAGES)
    assert (y_tf >= 0).all() and y_tf.max() > 1.0  # ReLU6 features of real weights, not an all-zero model

    cosine = (y_onnx * y_tf).sum(1) / (np.linalg.norm(y_onnx, axis=1) * np.linalg.norm(y_tf, axis=1))
    max_abs = float(np.abs(y_onnx - y_tf).max())
    record_property("min_cosine", float(cosine.min()))
    record_property("max_abs_diff", max_abs)
    print(f"\nONNX vs TensorFlow on {N_IMAGES} real images: min cosine {cosine.min():.8f}, max abs diff {max_abs:.3g}")
    assert cosine.min() >= 0.9999, cosine
    assert max_abs < 5e-4


def test_tensorflow_embedder_equals_keras_model(tf_artifact, weights, images):
    y_embedder = load_embedder(tf_artifact, threads=1)(images)
    y_direct = build_keras_model(str(weights))(images).numpy()
    _check_embeddings(y_embedder, N_IMAGES)
    # The embedder runs the model as a tf.function graph; grappler's fused kernels differ from eager by
    # ~6e-6 at most (features reach ~6), so "the same numbers" means equal to 1e-5, not bit-identical.
    print(f"\nTensorFlow embedder vs eager Keras model: max abs diff {np.abs(y_embedder - y_direct).max():.3g}")
    np.testing.assert_allclose(y_embedder, y_direct, rtol=0, atol=1e-5)


def test_embedder_batches(onnx_artifact, images):
    embed = load_embedder(onnx_artifact, threads=1)
    _check_embeddings(embed(images[:0]), 0)
    np.testing.assert_allclose(embed(images[3:4])[0], embed(images)[3], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="224, 224, 3"):
        embed(images[:, :100])


@pytest.mark.parametrize(
    "engine, engine_batch", [("onnx", 1), ("onnx", 3), ("onnx", None), ("onnx", 64), ("tf", 3), ("tf", None)]
)
def test_udf_engine_batches_keep_each_vector_with_its_image(spark, request, engine, engine_batch):
    """Decoded images go to the engine a few at a time, skipping undecodable ones: every row must still get its own
    image's vector (same as embedding it alone) or its own reason, whatever the engine batch and Arrow batch sizes.
    None is the engine's own choice: one image for ONNX Runtime, 4 for TensorFlow ("tf")."""
    artifact = request.getfixturevalue(f"{engine}_artifact")
    from pyspark.sql import functions as F

    from fruit_assets.embedding import embed_column
    from fruit_assets.images import decode

    good = [p.read_bytes() for p in sorted(IMAGES.glob("*/*.jpg"))[:: 97][:7]]
    bad = {1: b"", 4: b"not an image", 8: good[0][: len(good[0]) // 3]}
    contents, it = [], iter(good)
    for row in range(len(good) + len(bad)):
        contents.append(bad[row] if row in bad else next(it))
    df = spark.createDataFrame([(i, bytearray(c)) for i, c in enumerate(contents)], "row int, content binary")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
    try:
        out = (
            df.coalesce(1)
            .select("row", embed_column(F.col("content"), spark.sparkContext.broadcast(artifact), 1, 10**8, engine_batch).alias("o"))
            .orderBy("row")
            .collect()
        )
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    embed = load_embedder(artifact, threads=1)
    assert [r["row"] for r in out] == list(range(len(contents)))
    for r in out:
        if r["row"] in bad:
            assert r["o"]["features"] is None and r["o"]["error"], r
        else:
            assert r["o"]["error"] is None
            alone = embed(decode(contents[r["row"]])[None])[0]
            np.testing.assert_allclose(np.array(r["o"]["features"], dtype=np.float32), alone, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- caching


def test_prepare_artifact_caches_onnx(onnx_artifact, onnx_cache, weights, monkeypatch):
    sha = sha256_file(weights)
    assert onnx_artifact.weights_sha256 == sha
    cached = onnx_cache / f"mobilenet_v2_{sha}.onnx"
    assert [p.name for p in onnx_cache.iterdir()] == [cached.name]  # no temp files left behind
    assert cached.read_bytes() == onnx_artifact.payload
    mtime = cached.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("a warm cache must not reconvert")

    monkeypatch.setattr(engines, "_convert_to_onnx", no_conversion)
    monkeypatch.setattr(engines, "build_keras_model", no_conversion)
    t0 = time.perf_counter()
    again = prepare_artifact("onnx", weights, onnx_cache)
    warm_s = time.perf_counter() - t0
    assert again == onnx_artifact
    assert cached.stat().st_mtime_ns == mtime
    assert warm_s < 2.0, warm_s


def test_warm_cache_and_onnx_worker_never_import_tensorflow(onnx_artifact, onnx_cache, weights, images, tmp_path):
    np.save(tmp_path / "x.npy", images[:2])
    script = f"""
import json, sys
import numpy as np
from fruit_assets import engines
artifact = engines.prepare_artifact("onnx", {str(weights)!r}, {str(onnx_cache)!r})
y = engines.load_embedder(artifact, threads=1)(np.load({str(tmp_path / "x.npy")!r}))
print(json.dumps(dict(engine=artifact.engine, shape=list(y.shape),
                      heavy=sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules))))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"engine": "onnx", "shape": [2, EMBEDDING_DIM], "heavy": []}


def test_unusable_cache_file_is_reconverted(weights, tmp_path, caplog):
    cached = tmp_path / f"mobilenet_v2_{sha256_file(weights)}.onnx"
    cached.write_bytes(b"truncated onnx")
    with caplog.at_level(logging.WARNING, logger="fruit_assets.engines"):
        artifact = prepare_artifact("onnx", weights, tmp_path)
    assert "reconverting" in caplog.text
    assert cached.read_bytes() == artifact.payload and len(artifact.payload) > 1_000_000


def test_load_embedder_is_cached_per_process(onnx_artifact, tf_artifact):
    embed = load_embedder(onnx_artifact, threads=1)
    assert load_embedder(onnx_artifact, threads=1) is embed
    # a broadcast value arrives as a fresh, equal object: still the same embedder
    copy = EngineArtifact(onnx_artifact.engine, bytes(onnx_artifact.payload), onnx_artifact.weights_sha256)
    assert load_embedder(copy, threads=1) is embed
    assert load_embedder(onnx_artifact, threads=2) is not embed
    assert load_embedder(tf_artifact, threads=1) is load_embedder(tf_artifact, threads=1)


# ----------------------------------------------------------------------------------------------- errors


def test_unknown_engine(weights, tmp_path):
    with pytest.raises(ValueError, match="onnx.*tensorflow") as info:
        prepare_artifact("torch", weights, tmp_path)
    assert not isinstance(info.value, WeightsError)  # a configuration error, not a weights problem
    with pytest.raises(ValueError, match="onnx.*tensorflow"):
        load_embedder(EngineArtifact("torch", b"", "0" * 64))


@pytest.fixture(scope="module")
def wrong_shape_files(tmp_path_factory) -> dict[str, Path]:
    """Weights of MobileNetV2(alpha=0.5): legacy .h5 layout, Keras-3 layout, and Keras-3 layout named .h5."""
    import keras

    folder = tmp_path_factory.mktemp("wrong_shape")
    half = keras.applications.MobileNetV2(
        alpha=0.5, include_top=False, weights=None, input_shape=(224, 224, 3), pooling="avg"
    )
    files = {"legacy": folder / "half_legacy.h5", "keras3": folder / "half.weights.h5"}
    half.save(files["legacy"])  # legacy HDF5 model file: weights under model_weights/
    half.save_weights(files["keras3"])
    files["keras3_named_h5"] = folder / "half_keras3.h5"
    files["keras3_named_h5"].write_bytes(files["keras3"].read_bytes())
    return files


def _assert_weights_error(call, path: Path, *words: str) -> WeightsError:
    with pytest.raises(WeightsError) as info:
        call()
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    return info.value


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_weights(engine, tmp_path):
    missing = tmp_path / "nope.h5"
    _assert_weights_error(lambda: prepare_artifact(engine, missing, tmp_path), missing, "missing")
    _assert_weights_error(lambda: build_keras_model(missing), missing, "missing")
    _assert_weights_error(lambda: prepare_artifact(engine, tmp_path, tmp_path), tmp_path, "not a regular file")


@pytest.mark.parametrize("engine", ENGINES)
def test_non_hdf5_weights(engine, tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    _assert_weights_error(lambda: prepare_artifact(engine, garbage, tmp_path / "cache"), garbage, "not an HDF5")
    _assert_weights_error(lambda: build_keras_model(garbage), garbage, "not an HDF5")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    _assert_weights_error(lambda: prepare_artifact(engine, empty, tmp_path / "cache"), empty, "not an HDF5")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_hdf5_that_is_not_keras_weights(tmp_path):
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    _assert_weights_error(lambda: prepare_artifact("onnx", other, tmp_path), other, "not Keras weights")


@pytest.mark.parametrize("layout", ["legacy", "keras3", "keras3_named_h5"])
@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_shape_weights(engine, layout, wrong_shape_files, tmp_path):
    path = wrong_shape_files[layout]
    cache = tmp_path / "cache"
    _assert_weights_error(lambda: prepare_artifact(engine, path, cache), path, "does not fit")
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached for bad weights


def test_wrong_shape_message_names_the_mismatch(wrong_shape_files):
    error = _assert_weights_error(
        lambda: build_keras_model(wrong_shape_files["legacy"]), wrong_shape_files["legacy"], "Shape mismatch"
    )
    assert "(3, 3, 3, 32)" in str(error) and "(3, 3, 3, 16)" in str(error)


def test_imagenet_download_failure_is_a_weights_error(tmp_path, monkeypatch):
    """weights_path=None uses Keras's own download; make it fail deterministically (no network needed)."""
    import urllib.error

    from keras.src.backend import config
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras_home"))  # no cached download
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    for call in (lambda: build_keras_model(None), lambda: prepare_artifact("onnx", None, tmp_path / "cache")):
        with pytest.raises(WeightsError, match="weights_path=None.*download.*failed"):
            call()


# -------------------------------------------------------------------------------------------- fallbacks


def test_onnx_falls_back_to_tensorflow_without_onnxruntime(weights, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engines, "_onnxruntime_importable", lambda: False)
    with caplog.at_level(logging.WARNING, logger="fruit_assets.engines"):
        artifact = prepare_artifact("onnx", weights, tmp_path)
    assert artifact.engine == "tensorflow" and artifact.payload == weights.read_bytes()
    assert "falling back to 'tensorflow'" in caplog.text


def test_onnx_falls_back_to_tensorflow_without_tf2onnx_on_cold_cache(weights, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` raise ImportError
    with caplog.at_level(logging.WARNING, logger="fruit_assets.engines"):
        artifact = prepare_artifact("onnx", weights, tmp_path)
    assert artifact.engine == "tensorflow"
    assert "tf2onnx" in caplog.text and "falling back to 'tensorflow'" in caplog.text


def test_default_engine_and_versions():
    assert engines.default_engine() == "onnx"  # onnxruntime and tf2onnx are pinned dependencies
    versions = engines.engine_versions()
    assert {"tensorflow", "keras", "onnxruntime", "tf2onnx"} <= versions.keys(), versions
