"""A class folder removed from the images root: `fruits run` says its rows are still used, and `--prune` removes them
from every per-class dataset, from Dagster's partitions and from the PCA."""

import shutil

import dagster as dg
import pytest

from fruit_assets.cli import main
from fruit_assets.prune import CLASS_DATASETS
from tests.conftest import copy_images
from tests.lake_tables import read
from tests.materializations import latest


def test_every_per_class_asset_is_pruned():
    from fruit_assets.assets import ALL_ASSETS
    from fruit_assets.partitions import fruit_class_partitions

    per_class = {key.to_user_string() for a in ALL_ASSETS if a.partitions_def == fruit_class_partitions for key in a.keys}
    assert per_class == set(CLASS_DATASETS)


def labels(lake, dataset):
    table = read(lake, dataset)
    column = "fruit_class" if "fruit_class" in table.column_names else "label"  # pca_features is not per class
    return sorted(set(table.column(column).to_pylist())) if table.num_rows else []


@pytest.mark.slow
def test_removed_class_folder_is_pruned_only_when_asked(fruits_env, tmp_path, capsys):
    images = copy_images(tmp_path / "images", classes=["Banana", "Kiwi", "Lemon"], per_class=2)
    lake = fruits_env["lake"]
    args = ["run", "--images", str(images), "--pca-k", "2"]
    assert main(args) == 0
    shutil.rmtree(images / "Test" / "Kiwi")
    capsys.readouterr()

    assert main([*args, "--classes", "Banana"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 1 class(es) embedded earlier have no images under the images root now" in out and "'Kiwi'" in out
    assert labels(lake, "mobilenet_features") == ["Banana", "Kiwi", "Lemon"]
    instance = dg.DagsterInstance.get()
    assert latest(instance, "pca_model")["images"] == 6

    assert main([*args, "--prune"]) == 0
    assert "removing 1 class(es) without images under the images root now: ['Kiwi']" in capsys.readouterr().out
    for dataset in [*CLASS_DATASETS, "pca_features"]:
        assert "Kiwi" not in labels(lake, dataset), dataset
    assert labels(lake, "mobilenet_features") == ["Banana", "Lemon"]
    assert sorted(instance.get_dynamic_partitions("fruit_class")) == ["Banana", "Lemon"]
    assert latest(instance, "pca_model")["images"] == 4 and latest(instance, "pca_model")["classes"] == 2
