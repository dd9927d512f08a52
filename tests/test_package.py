"""The installable package: the wheel holds every data file the code reads and the `wdys` console
script, and a fresh virtual environment with the wheel and the lock's packages runs from anywhere.

Offline and fast: the wheel is built with this environment's setuptools (no build isolation), the
fresh environment is made without pip, sees the lock's packages (this test's own environment, made
from requirements.lock) through a `.pth` file, and gets the wheel from this environment's pip
(`pip --python`), with no index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("wdys", "core", "flows", "tasks", "deployments", "storage", "backends", "method", "sources")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the sources, so the checkout gets no build/ folder."""
    pytest.importorskip("setuptools")
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", str(src), "-w", str(dist))
    return next(dist.glob("wdys-*.whl"))


def test_the_wheel_holds_the_data_files_and_the_console_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "sources/classnames.json",
        "deployments/models.toml",
        "sources/embedded/cifar10/dev.parquet",
        "sources/embedded/cifar10/classes.json",
        "storage/reference/openclip_zeroshot_top1.csv",
        "tasks/report/__init__.py",  # subpackages travel too
    ):
        assert data in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "wdys = wdys.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [r for r in requires if "==" in r.split(";")[0]]  # ranges, not pins


@pytest.mark.slow
def test_a_fresh_environment_runs_wdys_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    lock_site = sysconfig.get_paths()["purelib"]  # this environment: requirements.lock's packages
    Path(purelib, "wdys_lock_packages.pth").write_text(lock_site + "\n")
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PYTHONPATH", "WDYS_ROOT"))
    }
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), WDYS_SHARED_DATASETS=str(tmp_path / "no-shared"))

    def wdys(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [venv / "bin" / "wdys", *args],
            capture_output=True,
            text=True,
            cwd=elsewhere,
            env=env,
            timeout=600,
        )

    helped = wdys("run", "--help")
    assert helped.returncode == 0 and "--datasets" in helped.stdout, helped.stderr
    where = subprocess.run(
        [python, "-c", "import sources, wdys; print(sources.__file__, wdys.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    ).stdout
    assert str(REPO) not in where and purelib in where  # the installed copy, not the checkout
    args = ["--limit", "6", "--shard-size", "6", "--class-weights", "name", "--class-samples", "1"]
    ran = wdys("run", *args, "--root", "results")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    assert "shards computed:" in ran.stdout and "classify: done" in ran.stderr
    queried = wdys("query", "--root", "results", "select dataset, n from metrics limit 1")
    assert queried.returncode == 0 and "cifar10" in queried.stdout and "6" in queried.stdout


def test_make_setup_installs_the_wdys_command_that_runs_from_any_folder(tmp_path):
    """README's `wdys run ...` examples work right after `make setup`: it installs the project into
    `.venv`, editable (`make test` runs `make setup` first)."""
    if not (REPO / ".venv").exists():
        pytest.skip("no .venv: these tests run outside `make`")
    wdys = REPO / ".venv" / "bin" / "wdys"
    assert wdys.exists(), "`make setup` did not install the wdys command into .venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    helped = subprocess.run(
        [wdys, "run", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert helped.returncode == 0, helped.stderr
    assert "--datasets" in helped.stdout and "--image-only" in helped.stdout
