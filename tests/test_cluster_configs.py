"""Offline checks of cluster/: shell scripts (syntax, shellcheck, dry runs with a fake nvidia-smi and a fake ray),
YAML, the `ray up` config against Ray's own autoscaler schema, the KubeRay manifests' required fields, and the
agreement between them (ports, paths, the token, the llama-cpp-python pin). Nothing here starts Ray or uses the
network."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
SCRIPTS = sorted([*CLUSTER.glob("*.sh"), *(ROOT / "bench").glob("*.sh"), *(ROOT / "bench" / "gpu").glob("*.sh")])
YAMLS = sorted(CLUSTER.rglob("*.yaml"))
GPU_MIB = 24564  # what the fake nvidia-smi reports per GPU (an RTX 4090)
VRAM_RESOURCE = '--resources={"vram_gb": %d}' % (2 * (GPU_MIB // 1024))  # noqa: UP031  (JSON braces)


def load(path: Path):
    return yaml.safe_load(path.read_text())


def llama_pin() -> str:
    match = re.search(r'"llama-cpp-python==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins llama-cpp-python"
    return match.group(1)


def common_ports() -> dict[str, int]:
    """The port defaults of cluster/common.sh: {'RAY_PORT': 6379, ...}."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'^: "\$\{(\w+_PORT):=(\d+)\}"', (CLUSTER / "common.sh").read_text(), re.M)}


def search_parser():
    from cerebellum_ray.cli import build_parser

    return build_parser()


# ---- a sandbox for running the scripts: fake nvidia-smi (2 x RTX 4090) and a fake ray that records its calls ----


@pytest.fixture
def sandbox(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"""#!/usr/bin/env bash
if [[ "$1" == -L ]]; then
    echo "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0)"; echo "GPU 1: NVIDIA GeForce RTX 4090 (UUID: GPU-1)"; exit 0
fi
if [[ "$*" == *nounits* ]]; then echo {GPU_MIB}; echo {GPU_MIB}; exit 0; fi
echo "0, NVIDIA GeForce RTX 4090, {GPU_MIB} MiB"; echo "1, NVIDIA GeForce RTX 4090, {GPU_MIB} MiB"
""")
    log = tmp_path / "ray-calls.jsonl"
    ray = bin_dir / "ray"
    ray.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE"),
                        "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN"), "cwd": os.getcwd(),
                        "CEREBELLUM_CACHE": os.environ.get("CEREBELLUM_CACHE")}}) + "\\n")
""")
    for f in (smi, ray):
        f.chmod(0o755)
    home = tmp_path / "home"
    (home / "cerebellum-venv" / "bin").mkdir(parents=True)
    (home / "cerebellum-venv" / "bin" / "activate").write_text("")  # what the ray up commands source
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "RAY_BIN": str(ray), "LANG": "C.UTF-8",
        "CEREBELLUM_ENV_FILE": str(tmp_path / "no-env-file"), "CEREBELLUM_CACHE": str(tmp_path / "cache"),
        "CEREBELLUM_WORK_DIR": str(tmp_path / "work"),
    }

    class Sandbox:
        path = tmp_path

        def run(self, argv, extra_env=None, check=True):
            proc = subprocess.run(argv, cwd=ROOT, env={**env, **(extra_env or {})}, capture_output=True, text=True,
                                  timeout=60)
            if check:
                assert proc.returncode == 0, proc.stderr
            return proc

        def calls(self):
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return Sandbox()


def dry_run_args(output: str) -> list[str]:
    """The `ray ...` command a --dry-run printed (its last line), as arguments after `env VAR=... ray`."""
    words = shlex.split(output.strip().splitlines()[-1])
    assert words[0] == "env"
    i = next(i for i, w in enumerate(words) if w.endswith("/ray") or w == "ray")
    return words[1:i] + ["RAY"] + words[i + 1:]


# ---- shell ----------------------------------------------------------------------------------------------------------


def test_cluster_files_exist():
    for name in ("start-head.sh", "start-worker.sh", "submit.sh", "common.sh", "runtime_env.yaml",
                 "ray-up-onprem.yaml", "README.md", "Dockerfile", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                 "kuberay/storage.yaml"):
        assert (CLUSTER / name).is_file(), name
    for name in ("start-head.sh", "start-worker.sh", "submit.sh"):
        assert os.access(CLUSTER / name, os.X_OK), f"{name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", "-x", *(str(p.relative_to(ROOT)) for p in SCRIPTS)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_start_head_dry_run(sandbox):
    args = dry_run_args(sandbox.run(["bash", "cluster/start-head.sh", "--dry-run"]).stdout)
    ports = common_ports()
    assert "RAY_AUTH_MODE=token" in args
    assert args[args.index("RAY") + 1:args.index("RAY") + 3] == ["start", "--head"]
    expected = {
        f"--port={ports['RAY_PORT']}", "--dashboard-host=0.0.0.0", f"--dashboard-port={ports['DASHBOARD_PORT']}",
        f"--ray-client-server-port={ports['CLIENT_PORT']}", f"--metrics-export-port={ports['METRICS_PORT']}",
        f"--node-manager-port={ports['NODE_MANAGER_PORT']}", f"--object-manager-port={ports['OBJECT_MANAGER_PORT']}",
        f"--min-worker-port={ports['MIN_WORKER_PORT']}", f"--max-worker-port={ports['MAX_WORKER_PORT']}",
        "--num-gpus=2", VRAM_RESOURCE,
    }
    assert expected <= set(args), expected - set(args)
    assert any(a.startswith("--num-cpus=") for a in args)
    assert sandbox.calls() == [], "--dry-run must not run ray"


def test_start_head_gpu_detection_and_overrides(sandbox):
    hidden = dry_run_args(sandbox.run(["bash", "cluster/start-head.sh", "--dry-run"],
                                      {"CUDA_VISIBLE_DEVICES": ""}).stdout)
    assert "--num-gpus=0" in hidden
    one = dry_run_args(sandbox.run(["bash", "cluster/start-head.sh", "--dry-run"],
                                   {"CUDA_VISIBLE_DEVICES": "1"}).stdout)
    assert "--num-gpus=1" in one
    manual = dry_run_args(sandbox.run(["bash", "cluster/start-head.sh", "--dry-run", "--num-gpus", "3",
                                       "--num-cpus=5", "--", "--temp-dir=/tmp/x"],
                                      {"DASHBOARD_PORT": "9265"}).stdout)
    assert {"--num-gpus=3", "--num-cpus=5", "--dashboard-port=9265", "--temp-dir=/tmp/x"} <= set(manual)
    bad = sandbox.run(["bash", "cluster/start-head.sh", "--dry-run", "--num-gpus", "0.5"], check=False)
    assert bad.returncode == 2 and "whole number" in bad.stderr


def test_start_head_local_mode(sandbox):
    args = dry_run_args(sandbox.run(["bash", "cluster/start-head.sh", "--local", "--dry-run"]).stdout)
    assert {"--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
            "RAY_AUTH_MODE=token"} <= set(args)


def test_start_head_refuses_disabled_auth(sandbox):
    proc = sandbox.run(["bash", "cluster/start-head.sh", "--dry-run"], {"RAY_AUTH_MODE": "disabled"}, check=False)
    assert proc.returncode == 2 and "token authentication on" in proc.stderr


def test_start_head_creates_a_private_token(sandbox):
    proc = sandbox.run(["bash", "cluster/start-head.sh", "--local"])
    token = Path(sandbox.path / "home" / ".ray" / "auth_token")
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert oct(token.stat().st_mode & 0o777) == "0o600"
    assert "created a new authentication token" in proc.stdout
    (call,) = sandbox.calls()
    assert call["args"][:2] == ["start", "--head"] and call["RAY_AUTH_MODE"] == "token"
    assert (sandbox.path / "cache").is_dir() and (sandbox.path / "work").is_dir()
    # a second start keeps the token
    before = token.read_text()
    sandbox.run(["bash", "cluster/start-head.sh", "--local"])
    assert token.read_text() == before


def test_start_worker(sandbox):
    args = dry_run_args(sandbox.run(["bash", "cluster/start-worker.sh", "10.0.0.10", "--dry-run"]).stdout)
    ports = common_ports()
    assert {"RAY_AUTH_MODE=token", f"--address=10.0.0.10:{ports['RAY_PORT']}", "--num-gpus=2",
            f"--metrics-export-port={ports['METRICS_PORT']}"} <= set(args)
    assert not any(a.startswith(("--head", "--dashboard-host")) for a in args)
    # no token: refuse, never create one
    proc = sandbox.run(["bash", "cluster/start-worker.sh", "10.0.0.10"], check=False)
    assert proc.returncode == 2 and "auth_token" in proc.stderr
    assert not (sandbox.path / "home" / ".ray").exists() and sandbox.calls() == []
    # with the head's token in the environment
    sandbox.run(["bash", "cluster/start-worker.sh", "10.0.0.10:7000"], {"RAY_AUTH_TOKEN": "t0k3n"})
    (call,) = sandbox.calls()
    assert "--address=10.0.0.10:7000" in call["args"] and call["RAY_AUTH_MODE"] == "token"
    assert call["RAY_AUTH_TOKEN"] == "t0k3n"


@pytest.mark.parametrize("script,argv,message", [
    ("start-head.sh", ["--dry-run", "--num-gpus"], "--num-gpus needs a value"),
    ("start-head.sh", ["--dry-run", "10.0.0.10"], "unexpected argument '10.0.0.10'"),
    ("start-head.sh", ["--dry-run", "--gpus", "1"], "unknown option --gpus"),
    ("start-worker.sh", ["10.0.0.10", "10.0.0.11", "--dry-run"], "one head address"),
    ("start-worker.sh", ["--dry-run"], "usage: start-worker.sh"),
    ("start-worker.sh", ["10.0.0.10", "--dry-run", "--node-ip"], "--node-ip needs a value"),
])
def test_start_scripts_refuse_bad_arguments(sandbox, script, argv, message):
    proc = sandbox.run(["bash", f"cluster/{script}", *argv], check=False)
    assert proc.returncode == 2 and message in proc.stderr and sandbox.calls() == []


def test_start_scripts_share_one_option_parser(sandbox):
    """--opt VALUE and --opt=VALUE mean the same on both scripts (one parser in common.sh)."""
    for script, head in (("start-head.sh", []), ("start-worker.sh", ["10.0.0.10"])):
        spaced = dry_run_args(sandbox.run(["bash", f"cluster/{script}", *head, "--dry-run", "--num-gpus", "1",
                                           "--num-cpus", "3", "--node-ip", "10.0.0.5", "--", "--temp-dir=/t"]).stdout)
        joined = dry_run_args(sandbox.run(["bash", f"cluster/{script}", *head, "--dry-run", "--num-gpus=1",
                                           "--num-cpus=3", "--node-ip=10.0.0.5", "--", "--temp-dir=/t"]).stdout)
        assert spaced == joined
        assert {"--num-gpus=1", "--num-cpus=3", "--node-ip-address=10.0.0.5", "--temp-dir=/t"} <= set(spaced)


SEARCH = ["--space", "search_spaces/tiny-gemma4.yaml", "--source", "/models/m.gguf", "--study", "s1",
          "--store", "/shared/store", "--storage-path", "/shared/tune", "--gpus-per-trial", "0.25"]


def test_submit_dry_run(sandbox):
    out = sandbox.run(["bash", "cluster/submit.sh", "--dry-run", "--head", "10.0.0.10", "--no-wait", "--",
                       *SEARCH]).stdout
    words = shlex.split(out.strip().splitlines()[-1])
    cmd = words[words.index("job"):]
    sep = cmd.index("--")
    assert cmd[:sep] == ["job", "submit", "--address", "http://10.0.0.10:8265", "--runtime-env",
                         "cluster/runtime_env.yaml", "--working-dir", ".", "--no-wait"]
    entry = cmd[sep + 1:]
    assert entry[:2] == ["cerebellum-ray", "search"]
    assert entry[2:] == [*SEARCH, "--address", "auto"]
    args = search_parser().parse_args(entry[1:])  # the real CLI accepts what is submitted
    assert args.address == "auto" and args.storage_path == "/shared/tune" and args.gpus_per_trial == 0.25
    assert "RAY_AUTH_MODE=token" in words


def test_submit_checks(sandbox):
    def fails(argv, env=None):
        proc = sandbox.run(["bash", "cluster/submit.sh", *argv], env, check=False)
        assert proc.returncode == 2, proc.stdout
        return proc.stderr

    assert "which cluster" in fails(["--dry-run", "--", *SEARCH])
    relative = [a if a != "/shared/store" else "store" for a in SEARCH]
    assert "--store must be an absolute path" in fails(["--dry-run", "--head", "h", "--", *relative])
    relative = [a if a != "/shared/tune" else "tune" for a in SEARCH]
    assert "--storage-path must be absolute" in fails(["--dry-run", "--head", "h", "--", *relative])
    assert "no authentication token" in fails(["--head", "h", "--", *SEARCH])
    assert "no search arguments" in fails(["--head", "h"])
    # s3:// is a valid storage path; an explicit --address is kept; RAY_ADDRESS names the head
    s3 = [a if a != "/shared/tune" else "s3://bucket/tune" for a in SEARCH]
    out = sandbox.run(["bash", "cluster/submit.sh", "--dry-run", "--", *s3, "--address", "10.0.0.10:6379"],
                      {"RAY_ADDRESS": "http://head:8265"}).stdout
    assert "--address http://head:8265" in out and out.count("--address auto") == 0


def test_submit_exports_the_token(sandbox):
    ray_dir = sandbox.path / "home" / ".ray"
    ray_dir.mkdir()
    (ray_dir / "auth_token").write_text("abc123")
    (ray_dir / "auth_token").chmod(0o600)
    sandbox.run(["bash", "cluster/submit.sh", "--head", "10.0.0.10", "--", *SEARCH], {"RAY_HEAD": "ignored"})
    (call,) = sandbox.calls()
    assert call["RAY_AUTH_MODE"] == "token" and call["RAY_AUTH_TOKEN"] == "abc123"
    assert Path(call["cwd"]) == ROOT  # --working-dir . is the repository root
    assert call["args"][:4] == ["job", "submit", "--address", "http://10.0.0.10:8265"]


# ---- YAML -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)


def test_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = load(CLUSTER / "runtime_env.yaml")
    assert set(env) <= {"env_vars", "excludes", "pip", "working_dir", "py_modules", "config"}
    RuntimeEnv(**env)  # Ray's own validation: env_vars must be str -> str
    assert env["env_vars"]["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
    assert env["env_vars"]["CEREBELLUM_CACHE"].startswith("/")
    assert "pip" not in env, "a pip list would rebuild llama-cpp-python without CUDA on every node"
    assert not any(k.startswith("AWS_") or "TOKEN" in k for k in env["env_vars"]), "no secrets in the runtime env"


# ---- ray up ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_up():
    return load(CLUSTER / "ray-up-onprem.yaml")


def test_ray_up_validates_against_rays_schema(ray_up):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(ray_up, schema)  # the file as written
    prepared = prepare_config(ray_up)  # what `ray up` validates: defaults filled in, the local node type added
    validate_config(prepared)
    (node_type,) = prepared["available_node_types"].values()
    n = len(ray_up["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == n


def test_ray_up_provider_and_install(ray_up):
    provider = ray_up["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]
    assert not ray_up.get("docker"), "docker stays off: the commands run on the boxes"
    assert ray_up["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = "\n".join(ray_up["setup_commands"])
    assert 'CMAKE_ARGS="-DGGML_CUDA=on' in setup
    assert f"llama-cpp-python=={llama_pin()}" in setup and f"'{llama_pin()}'" in setup
    assert "--no-cache-dir" in setup and "python3 -m venv" in setup
    assert "pip install --quiet -e ~/cerebellum-ray" in setup


def test_ray_up_start_commands(ray_up):
    head = ray_up["head_start_ray_commands"][-1]
    worker = ray_up["worker_start_ray_commands"][-1]
    ports = common_ports()
    every_node = {"METRICS_PORT": "--metrics-export-port", "OBJECT_MANAGER_PORT": "--object-manager-port",
                  "NODE_MANAGER_PORT": "--node-manager-port",
                  "DASHBOARD_AGENT_GRPC_PORT": "--dashboard-agent-grpc-port",
                  "RUNTIME_ENV_AGENT_PORT": "--runtime-env-agent-port",
                  "DASHBOARD_AGENT_LISTEN_PORT": "--dashboard-agent-listen-port",
                  "MIN_WORKER_PORT": "--min-worker-port", "MAX_WORKER_PORT": "--max-worker-port"}
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd and "--num-gpus=" in cmd and "--resources=" in cmd
        for name, flag in every_node.items():  # the same ports as start-head.sh / start-worker.sh
            assert f"{flag}={ports[name]}" in cmd, (flag, cmd)
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=0.0.0.0" in head and f"--port={ports['RAY_PORT']}" in head
    assert f"--dashboard-port={ports['DASHBOARD_PORT']}" in head
    assert f"--address=$RAY_HEAD_IP:{ports['RAY_PORT']}" in worker


def test_ray_up_start_commands_run(ray_up, sandbox):
    """Run the start commands as `ray up` would (bash -c), with a fake ray and nvidia-smi."""
    for key, first in (("head_start_ray_commands", ["start", "--head"]), ("worker_start_ray_commands", ["start"])):
        sandbox.run(["bash", "-c", ray_up[key][-1]], {"RAY_HEAD_IP": "10.0.0.10"})
        call = sandbox.calls()[-1]
        assert call["args"][:len(first)] == first and call["RAY_AUTH_MODE"] == "token"
        assert "--num-gpus=2" in call["args"]
        assert VRAM_RESOURCE in call["args"]
        assert call["CEREBELLUM_CACHE"] == load(CLUSTER / "runtime_env.yaml")["env_vars"]["CEREBELLUM_CACHE"]
    assert "--address=10.0.0.10:6379" in sandbox.calls()[-1]["args"]
    head_args = sandbox.calls()[0]["args"]
    cpus = int(next(a for a in head_args if a.startswith("--num-cpus=")).split("=")[1])
    assert 1 <= cpus <= os.cpu_count()


# ---- KubeRay --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raycluster():
    return load(CLUSTER / "kuberay" / "raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob():
    return load(CLUSTER / "kuberay" / "rayjob.yaml")


def check_pod_template(template, where):
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    assert spec["containers"], where
    for c in spec["containers"]:
        assert c["name"] and c["image"], where
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] == "auth_token", where
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: mount {m['name']} has no volume"
        ports = [p["containerPort"] for p in c.get("ports", [])]
        assert len(ports) == len(set(ports)), where
    return spec, volumes


def check_cluster_spec(spec, where):
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    workers = spec["workerGroupSpecs"]
    assert workers, where
    for group in [head, *workers]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams are strings"
        assert group["rayStartParams"]["metrics-export-port"] == str(common_ports()["METRICS_PORT"])
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    head_spec, head_volumes = check_pod_template(head["template"], f"{where} head")
    head_ports = {p["name"]: p["containerPort"] for p in head_spec["containers"][0]["ports"]}
    assert head_ports["gcs-server"] == 6379 and head_ports["dashboard"] == 8265 and head_ports["client"] == 10001
    for group in workers:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        pod, volumes = check_pod_template(group["template"], f"{where} {group['groupName']}")
        container = pod["containers"][0]
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, "GPU workers"
        requests = container["resources"].get("requests", {})
        assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        cache = mounts[env["CEREBELLUM_CACHE"]]  # the tensor cache is node-local
        assert set(volumes[cache["name"]]) & {"emptyDir", "hostPath"}
        assert mounts["/models"]["readOnly"] is True
        assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"]
        assert volumes[mounts["/shared"]["name"]]["persistentVolumeClaim"]["claimName"]
    return head_volumes


def test_raycluster(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    assert raycluster["metadata"]["name"]
    check_cluster_spec(raycluster["spec"], "RayCluster")


def test_rayjob(rayjob, raycluster):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    check_cluster_spec(spec["rayClusterSpec"], "RayJob")
    assert spec["rayClusterSpec"] == raycluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["RAY_CHDIR_TO_TRIAL_DIR"] == "0"
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_rayjob_entrypoint_matches_the_cli_and_the_volumes(rayjob):
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:2] == ["cerebellum-ray", "search"]
    args = search_parser().parse_args(words[1:])
    assert args.address == "auto" and args.storage_path == "/shared/tune" and args.resume
    assert args.gpus_per_trial == 0.25
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    for group in workers:
        mounts = {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert "/var/tmp/cerebellum-ray/work" in mounts, "candidate GGUFs stay on the node's disk"
        for path in (args.source, args.store, args.storage_path, args.space):
            assert any(path == m or path.startswith(m + "/") for m in mounts), f"{path} is on no volume"
    cpus = int(workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    gpus = int(workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert round(gpus / args.gpus_per_trial) * args.cpus_per_trial <= cpus, "the trials a GPU holds get their CPUs"


def test_kuberay_storage_claims(raycluster):
    claims = {d["metadata"]["name"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "storage.yaml").read_text())}
    assert all(d["kind"] == "PersistentVolumeClaim" for d in claims.values())
    spec = raycluster["spec"]
    used = {v["persistentVolumeClaim"]["claimName"]
            for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for v in group["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert used == set(claims)
    assert "ReadWriteMany" in claims["cerebellum-shared"]["spec"]["accessModes"]


# ---- image and docs -------------------------------------------------------------------------------------------------


def test_dockerfile_builds_cuda_llama():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"LLAMA_CPP_PYTHON_VERSION={llama_pin()}" in text and "-DGGML_CUDA=on" in text
    spec = load(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    images = {c["image"] for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1, "one image (built from cluster/Dockerfile) for head and workers"


def test_readme_covers_operations():
    text = (CLUSTER / "README.md").read_text()
    for needle in ("6379", "8265", "10001", "8080", "52365", "10002", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE=disabled",
                   "ray_cerebellum_trials_finished", "ray_cerebellum_best_kld", "ray_cerebellum_build_seconds",
                   "ray_cerebellum_score_seconds", "optuna-dashboard", "_optuna/<study>.journal",
                   "--gpus-per-trial 0.25", "--resume", "AWS_ENDPOINT_URL", "s3://", "--storage-path",
                   "CEREBELLUM_CACHE", "ssh -L", "prom_metrics_service_discovery.json"):
        assert needle in text, needle
