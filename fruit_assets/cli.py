"""`fruits`: materialize the graph from a terminal, recorded in the Dagster instance so the UI shows the runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fruit_assets import aws_cli

FLAG_ENV = {
    "images": "FRUITS_IMAGES_ROOT",
    "lake": "FRUITS_LAKE_ROOT",
    "weights": "FRUITS_MOBILENET_WEIGHTS",
    "pca_k": "FRUITS_PCA_K",
    "engine": "FRUITS_ENGINE",
    "deployment": "FRUITS_DEPLOYMENT",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the whole graph (all classes, or --classes) in this process")
    run.add_argument("--images", help="images root, local folder or s3:// URI (FRUITS_IMAGES_ROOT)")
    run.add_argument("--lake", help="lake root, local folder or s3:// URI (FRUITS_LAKE_ROOT)")
    run.add_argument("--weights", help="MobileNetV2 no-top .h5 weights, local or s3:// (FRUITS_MOBILENET_WEIGHTS)")
    run.add_argument("--pca-k", type=int, help="number of PCA components (FRUITS_PCA_K, default 50)")
    run.add_argument("--engine", choices=["onnx", "tensorflow"], help="inference engine (FRUITS_ENGINE)")
    run.add_argument("--deployment", choices=["local", "emr"], help="where Spark runs (FRUITS_DEPLOYMENT)")
    run.add_argument("--limit-per-class", type=int, metavar="N", help="mini mode: the first N images of each class")
    run.add_argument("--classes", nargs="+", metavar="CLASS", help="only these class folder names")
    run.add_argument("--prune", action="store_true",
                     help="first remove from the lake the classes embedded earlier whose folder has no images now")
    sub.add_parser("classes", help="list the class folders found under the images root")
    aws_cli.add_commands(sub)
    return parser


def _use_flags(args: argparse.Namespace) -> None:
    for flag, name in FLAG_ENV.items():
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[name] = str(value)
    if not os.environ.get("DAGSTER_HOME"):
        from resources import PROJECT_DIR

        home = PROJECT_DIR / ".dagster_home"
        home.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)


def _say(message: str) -> None:
    print(f"[fruits] {message}", flush=True)


def _config_error(exc: Exception) -> int:
    """A configuration that cannot work: one clear line on stderr, exit status 2, no traceback."""
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic's ValidationError from a settings resource: keep just our messages
        try:
            message = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in errors())
        except Exception:
            message = str(exc)
    else:
        message = str(exc)
    print(f"fruits: configuration error: {message}", file=sys.stderr, flush=True)
    return 2


def run(args: argparse.Namespace) -> int:
    import dagster as dg

    import jobs
    from fruit_assets.partitions import class_name, contiguous_ranges, fruit_class_partitions, partition_key
    from fruit_assets.preflight import CONFIG_ERRORS, preflight
    from fruit_assets.sensors import register_classes
    from resources import settings_resources

    started = time.monotonic()
    try:
        settings = settings_resources()
    except ValueError as exc:  # a FRUITS_* value that is not a number, or that a settings resource refuses
        return _config_error(exc)
    root = settings["images"].root
    _say(f"images root: {root}")
    _say(f"lake root:   {settings['lake_settings'].root}")
    _say(f"weights:     {settings['mobilenet'].weights or 'Keras ImageNet download'} (engine {settings['mobilenet'].engine})")
    try:  # every check that needs no Spark, before any Spark work
        plan = preflight(settings, classes=args.classes, limit_per_class=args.limit_per_class, prune=args.prune)
    except CONFIG_ERRORS as exc:
        return _config_error(exc)
    found, classes = plan.discovery, plan.classes
    for note in plan.notes:
        _say(f"WARNING: {note}")
    _fresh_definitions()
    instance = dg.DagsterInstance.get()
    register_classes(instance, found.class_names)
    results = []
    registered = map(class_name, instance.get_dynamic_partitions(fruit_class_partitions.name))
    gone = [c for c in registered if c not in found.classes]  # folder removed, renamed or emptied since
    if gone and args.prune:
        _say(f"removing {len(gone)} class(es) without images under the images root now: {gone}")
        result = dg.execute_job(dg.reconstructable(jobs.prune_classes), instance=instance,
                                run_config={"ops": {"prune_classes_from_lake": {"config": {"classes": gone}}}})
        results.append(result)
        if not result.success:
            return _fail(result)
        for name in gone:
            instance.delete_dynamic_partition(fruit_class_partitions.name, partition_key(name))
    elif gone:
        _say(f"WARNING: {len(gone)} class(es) embedded earlier have no images under the images root now; their rows "
             f"stay in the lake and in the PCA: {gone[:10]}. `fruits run --prune` removes them.")
    ordered = instance.get_dynamic_partitions(fruit_class_partitions.name)
    ranges = contiguous_ranges([partition_key(c) for c in classes], ordered)
    _say(f"{len(classes)} classes to embed, in {len(ranges)} run(s); DAGSTER_HOME={os.environ['DAGSTER_HOME']}")

    run_config = {"ops": {"raw_images": {"config": {"limit_per_class": args.limit_per_class}}}}
    for first, last in ranges:
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        _say(f"embedding classes {first!r} .. {last!r}")
        result = dg.execute_job(dg.reconstructable(jobs.embed_classes), instance=instance, tags=tags, run_config=run_config)
        results.append(result)
        if not result.success:
            return _fail(result)
    _say("fitting PCA over every materialized class")
    result = dg.execute_job(dg.reconstructable(jobs.reduce), instance=instance)
    results.append(result)
    if not result.success:
        return _fail(result)
    _summary(instance, results, time.monotonic() - started)
    return 0


def _fresh_definitions() -> None:
    """Dagster keeps the last job it reconstructed (an lru_cache on ReconstructableJob, keyed by the code pointer), so
    a second `run` in the same process (tests, notebooks) with other settings would execute against the first one's
    images root and lake. Clearing it makes jobs._job build the job again, with resources from the settings just
    checked."""
    from dagster._core.definitions.reconstruct import ReconstructableJob

    for cached in (ReconstructableJob.get_definition, ReconstructableJob.get_repository_definition):
        getattr(cached, "cache_clear", lambda: None)()


def _root_cause(error) -> str:
    """The innermost exception of a Dagster error chain, without Java/Python stack frames, kept short."""
    while error.cause is not None or error.context is not None:
        error = error.cause or error.context
    lines = [ln.strip() for ln in error.message.splitlines() if ln.strip() and not ln.lstrip().startswith("at ")]
    text = " ".join(lines)
    return text[:1000] + (" ..." if len(text) > 1000 else "")


def _fail(result) -> int:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            _say(f"FAILED: {event.step_key}: {error.message.strip()}")
            if error.cause is not None or error.context is not None:
                _say(f"  caused by: {_root_cause(error)}")
    _say(f"run {result.run_id} failed; see it in the Dagster UI (`make ui`) for the full logs.")
    return 1


def _summary(instance, results, seconds: float) -> None:
    import dagster as dg

    def latest(asset: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else {}

    features, pca, errors = latest("mobilenet_features"), latest("pca_model"), latest("image_errors")
    raw = latest("raw_images")
    checks = {}  # one line per check (a run's event stream can carry an evaluation more than once)
    for result in results:
        for event in result.all_events:
            if event.event_type_value == "ASSET_CHECK_EVALUATION":
                data = event.event_specific_data
                checks[data.check_name] = f"{data.check_name}: {'passed' if data.passed else 'FAILED'}"
    _say("done in %.1f s" % seconds)
    if raw.get("files_found") is not None:
        _say(f"files (last embedding run): {raw.get('files_found')} found in class folders = {raw.get('images')} images "
             f"+ {raw.get('ignored_files')} ignored (not images, or hidden names)")
    _say(f"features: {features.get('images_embedded')} images at {features.get('images_per_second')} img/s "
         f"({features.get('engine')}); errors: {errors.get('errors')}")
    _say(f"PCA k={pca.get('k')}: total explained variance {pca.get('total_explained_variance')}, "
         f"90% with {pca.get('components_for_90_percent')}, 95% with {pca.get('components_for_95_percent')} components")
    for line in checks.values():
        _say(f"check {line}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _use_flags(args)
    if args.command == "aws":
        return aws_cli.run_command(args)
    if args.command == "classes":
        from fruit_assets.layout import discover
        from resources import settings_resources

        found = discover(settings_resources()["images"].root)
        for name, splits in sorted(found.classes.items()):
            print(f"{name}\t{','.join(splits)}")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
