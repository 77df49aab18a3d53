"""The local multi-node proof (cluster/local-proof.sh): a head and two GPU worker nodes on this machine, a search
submitted as a Ray job with token authentication on, one worker killed mid-search.

Marked `cluster` and excluded from the default run (it starts three Ray nodes: about 1.5 minutes on 2 cores):
    .venv/bin/python -m pytest -m cluster
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
SCRIPT = Path(__file__).resolve().parent.parent / "cluster" / "local-proof.sh"


def test_local_cluster_survives_a_killed_worker(tmp_path):
    work = tmp_path / "proof"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PROOF_TRIALS": "10"}
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(var, None)  # the script makes its own token and cluster
    proc = subprocess.Popen(["bash", str(SCRIPT), str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's trap then stops exactly the Ray processes it started
        out, err = proc.communicate(timeout=60)
        pytest.fail("local-proof.sh timed out:\n" + err[-4000:])
    assert out.strip(), err[-4000:]
    summary = json.loads(out)
    assert proc.returncode == 0 and summary["ok"], json.dumps(summary["checks"]) + "\n" + err[-4000:]

    assert summary["job_status"] == "SUCCEEDED"
    assert all(summary["checks"].values())
    assert set(summary["nodes"]) == {"head", "w1", "w2"}
    assert summary["nodes"]["w1"]["GPU"] == summary["nodes"]["w2"]["GPU"] == 2
    assert summary["rows"] == 10 and summary["rows_by_status"] == {"complete": 10}
    assert summary["nodes_before_kill"] == ["w1", "w2"]  # trials placed on both workers
    assert "head" not in summary["rows_by_node"]
    killed, survivor = summary["killed"], summary["survivor"]
    assert {killed, survivor} == {"w1", "w2"} and "raylet" in summary["killed_processes"]["names"]
    assert summary["retried"]  # trials running on the killed worker failed and ran again ...
    assert all(r["node"] == survivor and r["status"] == "complete" and r["failures"] >= 1
               for r in summary["retried"].values())  # ... elsewhere, to completion
    assert summary["finished_on_killed_node_after_kill"] == []

    from cerebellum_ray.core import store

    rows = store.rows(work / "store", ["proof"])  # the store itself, not only the script's word
    assert len(rows) == 10 == len({r["trial_id"] for r in rows})
    assert all(r["status"] == "complete" and r["chunks_done"] == r["n_chunks"] for r in rows)
    assert set(summary["retried"]) <= {r["trial_id"] for r in rows}
