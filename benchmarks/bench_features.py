"""Feature extraction against the speed of the bare engine, in one run on the same cores.

1. Bare engines: the same MobileNetV2 weights through TensorFlow and ONNX Runtime, fed already-decoded 224x224
   batches, steady state after warm-up, one fresh process per configuration. Then the fastest of them again, each
   image first decoded from its file's bytes as the pipeline does: the ceiling of decode + inference without Spark.
2. The real pipeline: `fruits run` on N images (Spark read -> decode -> resize -> preprocess -> inference -> Parquet);
   its `mobilenet_features` step is the pipeline figure, its whole run the graph figure.
3. Optionally (--scaling 1000,5000,17845) the whole graph at several sizes: seconds and cost per image.

Prints one JSON line last on standard output. Usage: python benchmarks/bench_features.py [--images ROOT] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from fruit_assets.engines import FASTEST_BATCH  # noqa: E402
from resources import SHARED_DIR, default_weights  # noqa: E402

# Engine configurations: engine:PROCESSESxTHREADSxBATCH. Two single-thread processes mirror two Spark task slots
# with one engine thread each, the pipeline's own setting; batch 1 is ONNX Runtime's fastest and 4 TensorFlow's
# (the pipeline's defaults for them), 64 the Arrow batch.
ENGINE_CONFIGS = "tensorflow:2x1x64,tensorflow:1x2x4,tensorflow:2x1x4,onnx:1x2x64,onnx:2x1x64,onnx:1x2x1,onnx:2x1x1"
FAITHFUL_ENGINES = ("onnx", "tensorflow")  # both match TensorFlow to cosine >= 0.9999 (tests/test_engines.py)


def parse_spec(spec: str) -> tuple[str, int, int, int]:
    """'onnx:2x1x64' -> ('onnx', processes 2, threads 1, batch 64)."""
    engine, shape = spec.split(":")
    processes, threads, batch = (int(v) for v in shape.split("x"))
    return engine, processes, threads, batch


def _engine_worker(artifact, threads: int, seconds: float, batch: int, out, files: list[str]) -> None:
    """Runs in a fresh process: steady-state images/second of one engine instance. Like a Spark Python worker it
    only loads the engine (TensorFlow sizes its thread pools only if nothing initialised it before). With `files`,
    each input is first decoded from a file's bytes into the batch, as the pipeline's UDF does."""
    import numpy as np

    from fruit_assets.engines import load_embedder
    from fruit_assets.images import ImageDecodeError, decode_into

    embed = load_embedder(artifact, threads=threads)
    x = np.random.default_rng(0).uniform(-1, 1, size=(batch, 224, 224, 3)).astype(np.float32)
    blobs, position = [], 0
    for f in files:  # the images that decode (the pipeline turns the others into error rows)
        data = Path(f).read_bytes()
        try:
            decode_into(data, x[0])
            blobs.append(data)
        except ImageDecodeError:
            pass

    def one_batch() -> None:
        nonlocal position
        for row in range(batch if blobs else 0):
            decode_into(blobs[position % len(blobs)], x[row])
            position += 1
        embed(x)

    deadline = time.monotonic() + 3.0  # warm-up
    while time.monotonic() < deadline:
        one_batch()
    images, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        one_batch()
        images += batch
    out.put(images / (time.monotonic() - started))


def prepare(engine: str, weights: str, cache: str):
    """The driver's part (`prepare_artifact`), in a spawned process of its own: it initialises TensorFlow, which
    must stay out of the timed processes and of this one."""
    import multiprocessing as mp

    from fruit_assets.engines import prepare_artifact

    with mp.get_context("spawn").Pool(1) as pool:
        artifact = pool.apply(prepare_artifact, (engine, weights, cache))
    if artifact.engine != engine:
        raise SystemExit(f"engine {engine!r} is not available here (prepare_artifact fell back to {artifact.engine!r})")
    return artifact


def bench_engine(artifact, processes: int, threads: int, seconds: float, batch: int, files: list[Path] = ()) -> float:
    """Images/second of `processes` engine instances together; with `files`, decoding them too (split between
    the processes)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_engine_worker, args=(artifact, threads, seconds, batch, queue, [str(f) for f in files[i::processes]]))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    rates = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return sum(rates)


class TreeRss:
    """Peak resident memory of a process and all its descendants (driver, JVM, Python workers), sampled.

    RSS from /proc/<pid>/status only: reading smaps_rollup (for PSS) every 0.2 s walked the JVM's page tables
    and slowed the measured pipeline by ~15%."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> dict[int, list[int]]:
        tree: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                tree.setdefault(ppid, []).append(int(entry))
        return tree

    @staticmethod
    def _rss_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            tree, total, todo = self._children(), 0, [self.pid]
            while todo:
                pid = todo.pop()
                total += self._rss_kb(pid)
                todo += tree.get(pid, [])
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def pick(images: Path, limit: int | None) -> tuple[list[Path], int]:
    """The first `limit` files (all when None), taken round-robin over classes (sorted), and how many there are."""
    files = {c: sorted(p for p in c.rglob("*") if p.is_file()) for s in sorted(images.iterdir()) if s.is_dir()
             for c in sorted(s.iterdir()) if c.is_dir()}
    total = sum(len(v) for v in files.values())
    limit = total if limit is None else min(limit, total)
    chosen, depth = [], 0
    while len(chosen) < limit:
        for c, paths in files.items():
            if depth < len(paths) and len(chosen) < limit:
                chosen.append(paths[depth])
        depth += 1
    return chosen, total


def sample_root(images: Path, limit: int | None, into: Path) -> tuple[Path, int]:
    """The first `limit` images (see `pick`) copied into a fresh root; the root itself when that is all of it."""
    chosen, total = pick(images, limit)
    if len(chosen) == total:
        return images, total
    for p in chosen:
        target = into / p.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    return into, len(chosen)


def run_graph(root: Path, work: Path, weights: str, cache: str, extra_env: dict) -> dict:
    """One `fruits run` in a subprocess; step durations read back from its Dagster instance."""
    home, lake = work / "dagster_home", work / "lake"
    home.mkdir(parents=True)
    env = {**os.environ, **extra_env, "DAGSTER_HOME": str(home), "FRUITS_CACHE_DIR": cache, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "fruit_assets.cli", "run", "--images", str(root), "--lake", str(lake), "--weights", weights]
    started = time.monotonic()
    with open(work / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT)
        with TreeRss(proc.pid) as rss:
            code = proc.wait()
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"fruits run failed ({code}); see {work / 'run.log'}")
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    steps: dict[str, float] = {}
    for run in instance.get_runs():
        for stats in instance.get_run_step_stats(run.run_id):
            steps[stats.step_key] = stats.end_time - stats.start_time
    features = instance.get_latest_materialization_event(dg.AssetKey("mobilenet_features"))
    meta = {k: v.value for k, v in features.asset_materialization.metadata.items()}
    return {"wall_s": wall, "steps": steps, "peak_rss_mb": rss.peak_kb / 1024, "features": meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(SHARED_DIR / "data" / "fruits-360"))
    parser.add_argument("--weights", default=default_weights())
    parser.add_argument("--limit", type=int, help="number of images (default: all)")
    parser.add_argument("--engine-seconds", type=float, default=15.0)
    parser.add_argument("--engines", default=ENGINE_CONFIGS, help="engine:PROCESSESxTHREADSxBATCH,... (default %(default)s)")
    parser.add_argument("--decode-images", type=int, default=4000, help="files decoded for the engine-with-decoding rate")
    parser.add_argument("--scaling", help="comma-separated image counts for the whole-graph scaling mode")
    parser.add_argument("--keep", action="store_true", help="keep the temporary lake and logs")
    args = parser.parse_args()
    if not args.weights:
        raise SystemExit("No weights: pass --weights or put them in ../shared/models.")

    work = Path(tempfile.mkdtemp(prefix="fruits-bench-"))
    cache = str(work / "engine-cache")
    report: dict = {"cores": os.cpu_count(), "engines": {}}

    artifacts: dict = {}  # one per engine, shared by its configurations
    for spec in args.engines.split(","):
        engine, processes, threads, batch = parse_spec(spec)
        if engine not in artifacts:
            artifacts[engine] = prepare(engine, args.weights, cache)
        rate = bench_engine(artifacts[engine], processes, threads, args.engine_seconds, batch)
        report["engines"][spec] = round(rate, 1)
        print(f"engine {spec}: {rate:.1f} images/s", file=sys.stderr, flush=True)
    faithful = {k: v for k, v in report["engines"].items() if k.split(":")[0] in FAITHFUL_ENGINES}
    best = max(faithful, key=faithful.get)
    engine, processes, threads, batch = parse_spec(best)
    # The same engine configuration, each image decoded from its file first: what decoding costs before Spark.
    files, _ = pick(Path(args.images), args.decode_images)
    with_decode = bench_engine(artifacts[engine], processes, threads, args.engine_seconds, batch, files)
    print(f"engine {best} with decoding ({len(files)} files): {with_decode:.1f} images/s", file=sys.stderr, flush=True)

    root, images = sample_root(Path(args.images), args.limit, work / "images")
    result = run_graph(root, work / "run", args.weights, cache, {})
    step = result["steps"]["mobilenet_features_and_errors"]
    pipeline = images / step
    report.update(
        {
            "engine_images_per_s": faithful[best],
            "engine_best_config": best,
            "pipeline_images_per_s": round(pipeline, 1),
            "ratio": round(pipeline / faithful[best], 3),
            "engine_with_decode_images_per_s": round(with_decode, 1),
            "decode_ceiling": round(with_decode / faithful[best], 3),
            "ratio_to_engine_with_decode": round(pipeline / with_decode, 3),
            "embedding_pass_images_per_s": result["features"].get("images_per_second"),
            "images": images,
            "wall_s": round(result["wall_s"], 1),
            "mobilenet_features_step_s": round(step, 1),
            "peak_rss_mb": round(result["peak_rss_mb"]),
            "steps_s": {k: round(v, 1) for k, v in sorted(result["steps"].items())},
            "settings": {
                "engine": result["features"].get("engine"),
                "spark_tasks": result["features"].get("spark_tasks"),
                "spark_master": "local[*]",
                "engine_threads_per_task": int(os.environ.get("FRUITS_ENGINE_THREADS", "1")),
                "arrow_batch": int(os.environ.get("FRUITS_ARROW_BATCH", "64")),
                "engine_batch": int(os.environ.get("FRUITS_ENGINE_BATCH") or FASTEST_BATCH[result["features"]["engine"]]),
            },
        }
    )
    print(f"pipeline: {pipeline:.1f} images/s over {images} images; whole graph {result['wall_s']:.0f} s",
          file=sys.stderr, flush=True)

    if args.scaling:
        from fruit_assets.infra import PRICES_EUR_PER_HOUR_EU_WEST_1

        m5 = PRICES_EUR_PER_HOUR_EU_WEST_1["m5.xlarge"]

        scaling = []
        for n in (int(v) for v in args.scaling.split(",")):
            root_n, count = sample_root(Path(args.images), n, work / f"images-{n}")
            run = run_graph(root_n, work / f"scale-{n}", args.weights, cache, {})
            per_image = run["wall_s"] / count
            # Cost if the same work ran on m5.xlarge (4 vCPU) nodes at this machine's per-core speed, no minimum.
            node_hours = run["wall_s"] * (os.cpu_count() or 2) / 4 / 3600
            scaling.append({
                "images": count,
                "wall_s": round(run["wall_s"], 1),
                "s_per_image_ms": round(1000 * per_image, 2),
                "eur_per_million_images_m5_xlarge": round((m5["ec2"] + m5["emr"]) * node_hours / count * 1e6, 2),
                "peak_rss_mb": round(run["peak_rss_mb"]),
            })
            print(f"scaling {count}: {run['wall_s']:.1f} s, {1000 * per_image:.2f} ms/image", file=sys.stderr, flush=True)
        report["scaling"] = scaling
        sizes = [row["images"] for row in scaling]
        if len(set(sizes)) >= 2:  # wall = fixed + marginal x images (least squares): how cost grows with work
            marginal, fixed = statistics.linear_regression(sizes, [row["wall_s"] for row in scaling])
            report["scaling_fit"] = {"fixed_s": round(fixed, 1), "marginal_ms_per_image": round(1000 * marginal, 2)}
            for before, row in zip(scaling, scaling[1:]):
                added = row["images"] - before["images"]
                if added > 0:
                    row["marginal_ms_per_image"] = round(1000 * (row["wall_s"] - before["wall_s"]) / added, 2)

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        report["work_dir"] = str(work)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
