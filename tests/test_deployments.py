"""Deployments for real: a local `prefect server start`, the pool, the deployments and a process
worker; `prefect deployment run 'benchmark/quick' --watch`; parameter validation by the server;
the `wdys.model.registered` trigger; watch-models starting exactly one run for what is new; and
the same deployments for a second (Kubernetes-type) pool with another image, made from settings.

Every process is started in its own session and killed with its group at teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from process_support import REPO, free_port, start, stop

BIN = Path(sys.executable).parent
QUICK_PARAMS = [
    "--param",
    "limit=20",
    "--param",
    "sample_seed=0",
    "--param",
    "shard_size=10",
    "--param",
    "class_samples=1",
]


def run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "WDYS_ROOT": str(tmp_path_factory.mktemp("root")),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    proc = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        home / "server.log",
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
                pytest.fail(
                    "prefect server did not become healthy:\n" + (home / "server.log").read_text()[-3000:]
                )
            time.sleep(0.5)
    deployed = run([sys.executable, "-m", "deployments.deploy", "--no-schedules"], env, timeout=180)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    yield env
    stop(proc)


def flow_runs(env: dict, deployment: str) -> list[dict]:
    code = (
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        f"    d = c.read_deployment_by_name({deployment!r})\n"
        "    runs = [r for r in c.read_flow_runs(limit=200) if r.deployment_id == d.id]\n"
        "    rows = [{'id': str(r.id), 'parameters': r.parameters, 'state': r.state_name} for r in runs]\n"
        "    print(json.dumps(rows))\n"
    )
    out = run([sys.executable, "-c", code], env, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_quick_deployment_runs_on_a_worker_and_lands_in_duckdb(server, tmp_path):
    worker = start(
        [str(BIN / "prefect"), "worker", "start", "--pool", "wdys-process"], server, tmp_path / "worker.log"
    )
    try:
        result = run(
            [str(BIN / "prefect"), "deployment", "run", "benchmark/quick", *QUICK_PARAMS, "--watch"], server
        )
    finally:
        stop(worker)
    assert result.returncode == 0, result.stdout[-3000:] + (tmp_path / "worker.log").read_text()[-3000:]
    assert "Completed" in result.stdout
    with duckdb.connect(str(Path(server["WDYS_ROOT"]) / "wdys.duckdb"), read_only=True) as con:
        rows = con.sql(
            "select components, top1 from metrics where subset = 'sample20-seed0-shard10'"
        ).fetchall()
    assert len(rows) == 7 * 5 and all(0 <= top1 <= 100 for _, top1 in rows)


def test_server_refuses_a_wrong_parameter_type(server):
    before = len(flow_runs(server, "benchmark/quick"))
    out = run(
        [str(BIN / "prefect"), "deployment", "run", "benchmark/quick", "--param", "shard_size=abc"], server
    )
    assert out.returncode != 0
    assert "shard_size" in out.stdout and "not of type 'integer'" in out.stdout
    out = run(
        [str(BIN / "prefect"), "deployment", "run", "benchmark/quick", "--param", 'class_weights=["nope"]'],
        server,
    )
    assert out.returncode != 0 and "class_weights" in out.stdout
    assert len(flow_runs(server, "benchmark/quick")) == before  # no run was created


def test_model_registered_event_triggers_watch_models(server):
    code = "from flows.watch_models import announce_model; announce_model('offline:lite0-labels')"
    assert run([sys.executable, "-c", code], server, timeout=60).returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = flow_runs(server, "watch-models/default")
        if any(r["parameters"].get("extra_models") == ["offline:lite0-labels"] for r in runs):
            return
        time.sleep(2)
    pytest.fail(f"no watch-models run for the event; runs: {runs}")


def test_watch_models_starts_one_run_for_new_models_and_then_none(server, tmp_path):
    """Needs the quick run's results (lite0 encoder x lite2 describer) from the first test."""
    registry = tmp_path / "models.toml"
    registry.write_text(
        'version = 2\ndeployment = "benchmark/quick"\ndatasets = ["cifar10"]\nsplits = ["dev"]\n'
        "[parameters]\nlimit = 20\nsample_seed = 0\nshard_size = 10\nclass_samples = 1\n"
        '[[encoders]]\nid = "offline:conse-lite0-minilm"\n'
        '[[describers]]\nid = "offline:lite2-labels"\n[[describers]]\nid = "offline:lite0-labels"\n'
    )
    code = (
        "import json, sys\nfrom flows.watch_models import watch_models\n"
        f"print('RESULT', json.dumps(watch_models(registry_path={str(registry)!r})))\n"
    )
    before = flow_runs(server, "benchmark/quick")
    results = []
    for _ in range(2):
        out = run([sys.executable, "-c", code], server, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        results.append(json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    first, second = results
    assert first["missing"] == [["cifar10", "dev", "offline:conse-lite0-minilm", "offline:lite0-labels"]]
    new = [r for r in flow_runs(server, "benchmark/quick") if r["id"] not in {b["id"] for b in before}]
    assert len(new) == 1 and new[0]["id"] == first["flow_run_id"]
    assert new[0]["parameters"]["describers"] == ["offline:lite0-labels"]
    assert new[0]["parameters"]["encoders"] == ["offline:conse-lite0-minilm"]
    assert second["flow_run_id"] == first["flow_run_id"]  # the idempotency key: nothing new started


def test_an_open_vlm_counts_as_evaluated_on_either_engine():
    """watch-models passes `hf:` VLMs on as registered (the run's worker picks vLLM or transformers),
    so results of the same model under `vllm:` are that model evaluated; other schemes stay apart."""
    from flows.watch_models import Registry, missing_combinations
    from storage.paths import partition_value

    registry = Registry(
        "benchmark/paper", ["cifar10"], ["test"], ["open_clip:ViT-B-32/openai"],
        ["hf:org/vlm-a", "hf:org/vlm-b", "openai:org/vlm-a"], {},
    )  # fmt: skip
    done = {
        tuple(map(partition_value, ("cifar10", "test", "open_clip:ViT-B-32/openai", d)))
        for d in ("vllm:org/vlm-a", "hf:org/vlm-b")
    }

    missing = missing_combinations(registry, done)

    assert missing == [("cifar10", "test", "open_clip:ViT-B-32/openai", "openai:org/vlm-a")]


K8S = "wdys-k8s"
IMAGE = "registry.example/wdys:test-1"


def test_deployments_for_a_kubernetes_pool_are_settings_not_code(server):
    """A second pool, of another type, with an image, a code folder inside that image, more env and
    a pool-specific job variable: all from the command line. Read back from the server. (No
    Kubernetes cluster here: nothing runs on that pool.)"""
    out = run(
        [sys.executable, "-m", "deployments.deploy", "--no-schedules", "--pool", K8S,
         "--pool-type", "kubernetes", "--image", IMAGE, "--source", "/opt/wdys", "--suffix=-k8s",
         "--env", "WDYS_ROOT=s3://bucket/wdys", "--job-variable", 'namespace="wdys"', "--gpu-slots", "2"],
        server,
        timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    code = (
        "import json\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        f"    pool = c.read_work_pool({K8S!r})\n"
        "    names = ['benchmark/quick', 'benchmark/quick-dask', 'benchmark/paper', 'benchmark/nightly',\n"
        "             'watch-models/default']\n"
        "    ds = {n: c.read_deployment_by_name(n + '-k8s') for n in names}\n"
        "    local = c.read_deployment_by_name('benchmark/quick')\n"
        "    rows = {n: [d.work_pool_name, d.job_variables, d.pull_steps] for n, d in ds.items()}\n"
        "    print(json.dumps({'type': pool.type, 'deployments': rows,\n"
        "        'image_variable': 'image' in pool.base_job_template['variables']['properties'],\n"
        "        'local': [local.work_pool_name, local.job_variables]}))\n"
    )
    read = run([sys.executable, "-c", code], server, timeout=60)
    assert read.returncode == 0, read.stderr[-3000:]
    got = json.loads(read.stdout.strip().splitlines()[-1])
    assert got["type"] == "kubernetes" and got["image_variable"]
    assert len(got["deployments"]) == 5
    for pool, job, pull_steps in got["deployments"].values():
        assert pool == K8S
        assert job["image"] == IMAGE and job["namespace"] == "wdys"
        assert job["env"]["WDYS_ROOT"] == "s3://bucket/wdys" and job["env"]["PYTHONPATH"] == "/opt/wdys"
        assert job["env"]["WDYS_GPU_LIMIT"] == "gpu" and job["env"]["WDYS_GPU_SLOTS"] == "2"
        assert pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/wdys"}}]
    pool, job = got["local"]  # the default deployments stay on the process pool, without an image
    assert pool == "wdys-process" and "image" not in job and job["env"]["PYTHONPATH"] == str(REPO)


def test_a_git_source_becomes_a_clone_step():
    from deployments.deploy import Target, definitions

    url = "https://git.example/wdys.git"
    deployments = definitions(schedules=False, target=Target(source=url, env={"PYTHONPATH": "/work/wdys"}))
    assert len(deployments) == 5
    for d in deployments:
        assert d.storage.to_pull_step()["prefect.deployments.steps.git_clone"]["repository"] == url
        assert d.job_variables["env"]["PYTHONPATH"] == "/work/wdys"
