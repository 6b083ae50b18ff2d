"""Under a C locale (cron jobs, bare containers) Spark's JVM must still open class folders with non-ASCII names."""

import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR

READ = """
import sys
import resources
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[1]").getOrCreate()
print(spark.read.format("binaryFile").load(sys.argv[1]).count())
"""


@pytest.mark.parametrize("variable", ["LC_ALL", "LANG"])  # LC_ALL overrides LC_CTYPE; LANG does not
def test_a_c_locale_still_reads_non_ascii_class_folders(tmp_path, variable):
    folder = tmp_path / "Test" / "Pêche plate"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"not decoded here")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env.update({variable: "C", "PYTHONPATH": str(PROJECT_DIR)})
    out = subprocess.run([sys.executable, "-c", READ, str(folder / "a.jpg")], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"
