#!/usr/bin/env bash
# A multi-node proof on this one machine: a head and two worker nodes (logical GPUs), a search submitted as a Ray
# job, the job seen through the dashboard's HTTP API, trials on both workers, then one worker killed mid-search:
# its trials are retried on the other worker and the store still ends up complete.
#
#   cluster/local-proof.sh [WORKDIR]        (default: a new directory under /tmp)
#
# Token authentication stays on: a fresh token for this run only (RAY_AUTH_TOKEN, RAY_AUTH_MODE=token), never
# written to ~/.ray/auth_token. Nodes are started with --node-ip-address=127.0.0.1 (Ray advertises this machine's own
# address for it; nothing leaves the machine) and the dashboard listens on 127.0.0.1 only. Ports are its own (a free
# block of 400 from PROOF_PORT_BASE, default: a random free one in 20000-32000), temporary directories too, so it can
# run beside other Ray clusters on this machine; on exit it stops exactly the processes it started (never
# `ray stop`, which would stop every Ray on the machine).
#
# Environment: PROOF_TRIALS (10), PROOF_KILL_AFTER (3 stored rows), PROOF_TIMEOUT (900 s for the job),
# PROOF_PORT_BASE, PROOF_KEEP_LOGS=1 (copy Ray's logs to WORKDIR/ray-logs even on success).
# Output: progress on stderr; on stdout one JSON summary (also WORKDIR/summary.json). Exit 0 only if every check
# passed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$repo/.venv/bin/ray" && -z "${VIRTUAL_ENV:-}" ]]; then
    export PATH="$repo/.venv/bin:$PATH"
fi
for tool in ray cerebellum-ray python; do
    command -v "$tool" >/dev/null || { echo "error: no '$tool' on PATH (activate the project's virtualenv)" >&2; exit 2; }
done

if [[ -n "${1:-}" ]]; then
    mkdir -p "$1" && work="$(cd "$1" && pwd)"
else
    work="$(mktemp -d /tmp/cerebellum-proof.XXXXXX)"
fi
trials="${PROOF_TRIALS:-10}"
kill_after="${PROOF_KILL_AFTER:-3}"
max_failures=3
job_timeout="${PROOF_TIMEOUT:-900}"
study="proof"
store="$work/store"
# Ray's unix sockets live under the temp dir: keep it short (108 bytes per socket path), whatever WORKDIR is
tmp="$(mktemp -d /tmp/crp.XXXXXX)"
helper="$tmp/proof.py"
h() { python "$helper" "$@"; }
log() { echo "[local-proof $(date +%H:%M:%S)] $*" >&2; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    log "stopping this proof's Ray processes (only those under $tmp)"
    h kill SIGTERM 10 "$tmp" >&2 || true
    h kill SIGKILL 2 "$tmp" >&2 || true
    if ((rc != 0)) || [[ "${PROOF_KEEP_LOGS:-0}" == 1 ]]; then
        mkdir -p "$work/ray-logs"
        for d in "$tmp"/h "$tmp"/w1 "$tmp"/w2; do
            [[ -d "$d/session_latest/logs" ]] && cp -rL "$d/session_latest/logs" "$work/ray-logs/$(basename "$d")" 2>/dev/null
        done
        log "Ray logs copied to $work/ray-logs"
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
t_start=$(date +%s.%N)

export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN="$(python -c 'import secrets; print(secrets.token_hex(32))')"
export RAY_AUTH_TOKEN
export PROOF_TMP="$tmp" PROOF_WORK="$work" PROOF_STORE="$store" PROOF_STUDY="$study" PROOF_TRIALS="$trials"

# ---- the Python half: HTTP API calls with the token, the processes of a node, the checks ---------------------------
cat >"$helper" <<'PY'
import json, os, signal, socket, sys, time, urllib.error, urllib.request

TOKEN = os.environ.get("RAY_AUTH_TOKEN", "")
TMP = os.environ.get("PROOF_TMP", "")
STATE = os.path.join(TMP, "state.json")


def state():
    with open(STATE) as f:
        return json.load(f)


def save(**kw):
    s = state() if os.path.exists(STATE) else {}
    s.update(kw)
    with open(STATE + ".tmp", "w") as f:
        json.dump(s, f, indent=1)
    os.replace(STATE + ".tmp", STATE)


def api(path, auth=True, timeout=10):
    """GET the dashboard's HTTP API with the token (Authorization: Bearer, what Ray's middleware checks)."""
    req = urllib.request.Request(state()["dashboard"] + path)
    if auth:
        req.add_header("Authorization", "Bearer " + TOKEN)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300]
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def free_base(span):
    """The first of `span` consecutive ports all free on this machine."""
    import random
    fixed = os.environ.get("PROOF_PORT_BASE")
    candidates = [int(fixed)] if fixed else random.sample(range(20000, 32000 - span, 500), 20)
    for base in candidates:
        socks = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    sys.exit("no free block of %d ports (set PROOF_PORT_BASE)" % span)


def nodes():
    code, body = api("/api/v0/nodes?limit=100&detail=true")
    if code != 200:
        return []
    return body["data"]["result"]["result"]


def wait_nodes(n, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [x for x in nodes() if x.get("state") == "ALIVE"]
        if len(alive) >= n:
            labels = {}
            for x in alive:
                res = x.get("resources_total") or {}
                label = next((k[len("proof_"):] for k in res if k.startswith("proof_")), "head")
                labels[label] = {"node_id": x["node_id"], "CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0)}
            save(nodes=labels)
            print(json.dumps(labels))
            return
        time.sleep(1)
    sys.exit("timed out waiting for %d nodes" % n)


def job():
    code, body = api("/api/jobs/" + state()["job"])
    return body if code == 200 else {"status": "UNREACHABLE (%s)" % code, "message": str(body)}


def label_of(node_value, labels):
    """The store's `node` column is hostname:<first 12 hex digits of the Ray node id>."""
    nid = (node_value or "").rsplit(":", 1)[-1]
    return next((k for k, v in labels.items() if nid and v["node_id"].startswith(nid)), node_value)


def store_rows():
    from cerebellum_ray.core import store
    d = os.environ["PROOF_STORE"]
    return store.rows(d, [os.environ["PROOF_STUDY"]]) if os.path.isdir(d) else []


def alive_actors_by_node():
    code, body = api("/api/v0/actors?limit=10000&detail=true&filter_keys=state&filter_predicates=%3D"
                     "&filter_values=ALIVE")
    out = {}
    if code == 200:
        for a in body["data"]["result"]["result"]:
            if a.get("class_name") != "JobSupervisor":
                out[a.get("node_id")] = out.get(a.get("node_id"), 0) + 1
    return out


def wait_kill_point(min_rows, timeout):
    """Wait until >= min_rows rows are stored, rows from both workers among them, and a worker runs trials now."""
    labels = state()["nodes"]
    workers = ["w1", "w2"]
    deadline = time.time() + timeout
    last = 0
    while time.time() < deadline:
        j = job()
        if j.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
            sys.exit("the job ended (%s) before the kill point" % j.get("status"))
        rows = store_rows()
        seen = {label_of(r["node"], labels) for r in rows}
        busy = alive_actors_by_node()
        running = {w: busy.get(labels[w]["node_id"], 0) for w in workers}
        if time.time() - last > 10:
            last = time.time()
            print("[local-proof] job %s, %d rows stored (nodes %s), trial actors running %s"
                  % (j.get("status"), len(rows), sorted(map(str, seen)), running), file=sys.stderr, flush=True)
        if len(rows) >= min_rows and set(workers) <= seen and max(running.values()) > 0:
            # the worker running more trials right now (w2 on a tie); killed at once, so that they are still running
            victim = max(("w2", "w1"), key=lambda w: running[w])
            killed = kill("SIGKILL", [os.path.join(TMP, victim)], wait=5)
            save(victim=victim, survivor=({"w1", "w2"} - {victim}).pop(), kill_time=time.time(),
                 rows_at_kill=len(rows), actors_on_victim_at_kill=running[victim], killed_processes=killed,
                 trial_ids_before_kill=sorted(r["trial_id"] for r in rows))
            print(json.dumps({"victim": victim, "trial_actors_running_there": running[victim], **killed}))
            return
        time.sleep(0.5)
    sys.exit("timed out waiting for the kill point")


def _proc_table():
    """{pid: (ppid, state, command line, environment)} from /proc (no psutil in Ray's default install)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                env = f.read()
        except OSError:
            env = b""
        table[pid] = (int(fields[1]), fields[0], cmd, env)
    return table


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def procs(dirs):
    """Processes of this proof's nodes: those whose command line or environment (PROOF_NODE_DIR, set for each
    `ray start`) names one of `dirs` (node temp dirs), plus all their descendants (Ray's workers retitle
    themselves, so the process tree is what finds them); never this process or its ancestors."""
    table = _proc_table()
    exclude, pid = set(), os.getpid()
    while pid > 1 and pid not in exclude:
        exclude.add(pid)
        pid = table.get(pid, (1,))[0]
    marks = [d.encode() for d in dirs]
    found = {pid for pid, (_, _, cmd, env) in table.items()
             if any(m in cmd or b"PROOF_NODE_DIR=" + m in env for m in marks)}
    children = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return {pid: _short(table[pid][2]) for pid in sorted(found - exclude) if table[pid][1] not in ("Z", "X")}


def _short(cmd):
    words = [w.rsplit("/", 1)[-1] for w in cmd.decode(errors="replace").split()] or ["?"]
    if words[0].startswith("python") and len(words) > 1:
        return words[2] if words[1] in ("-u", "-m", "-B") and len(words) > 2 else words[1]
    return words[0]


def kill(sig_name, dirs, wait=0.0):
    sig = getattr(signal, sig_name)
    ps = procs(dirs)
    for pid in ps:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.time() + wait
    while time.time() < deadline and any(_alive(p) for p in ps):
        time.sleep(0.2)
    left = [p for p in ps if _alive(p)]
    return {"signal": sig_name, "signalled": len(ps), "names": sorted(set(ps.values())), "left": len(left)}


def wait_job(timeout):
    deadline = time.time() + timeout
    last = 0
    labels = state()["nodes"]
    while time.time() < deadline:
        j = job()
        if j.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
            save(job_end=time.time())
            print(j["status"])
            return
        if time.time() - last > 15:
            last = time.time()
            rows = store_rows()
            by = {}
            for r in rows:
                by[label_of(r["node"], labels)] = by.get(label_of(r["node"], labels), 0) + 1
            print("[local-proof] job %s, %d rows stored %s" % (j.get("status"), len(rows), by), file=sys.stderr,
                  flush=True)
        time.sleep(1)
    save(job_end=time.time())
    print("TIMEOUT")


def tune_failures():
    """{trial_id: num_failures} from Tune's saved experiment state (the driver saves it every 2 s)."""
    import glob
    exp = os.path.join(os.environ["PROOF_STORE"], "_tune", os.environ["PROOF_STUDY"])
    files = sorted(glob.glob(os.path.join(exp, "experiment_state-*.json")), key=os.path.getmtime)
    if not files:
        return {}
    with open(files[-1]) as f:
        data = json.load(f)
    out = {}
    for trial_json, meta_json in data.get("trial_data", []):
        t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        m = json.loads(meta_json) if isinstance(meta_json, str) else meta_json
        tid = t.get("trial_id") or t.get("_trial_id")
        out[tid] = int(m.get("num_failures", 0))
    return out


def failure_cause(trial_id):
    """The line of the trial's error.txt (Tune writes one entry per failure) that says why it failed."""
    import glob
    exp = os.path.join(os.environ["PROOF_STORE"], "_tune", os.environ["PROOF_STUDY"])
    for path in glob.glob(os.path.join(exp, "*_%s_*" % trial_id, "error.txt")):
        with open(path) as f:
            lines = [x.strip() for x in f]
        return next((x for x in lines if "node" in x.lower() and "died" in x.lower()), lines[1] if len(lines) > 1
                    else None)
    return None


def summary(job_status, max_failures):
    s = state()
    labels = s["nodes"]
    victim, survivor = s.get("victim"), s.get("survivor")
    rows = store_rows()
    n = int(os.environ["PROOF_TRIALS"])
    failures = tune_failures()
    ids = [r["trial_id"] for r in rows]
    by_node, by_status = {}, {}
    for r in rows:
        lab = label_of(r["node"], labels)
        by_node[lab] = by_node.get(lab, 0) + 1
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    kill_time = s.get("kill_time", float("inf"))
    before = {label_of(r["node"], labels) for r in rows if r["finished_at"].timestamp() < kill_time}
    retried = {t: k for t, k in failures.items() if k > 0}
    retried_rows = [r for r in rows if r["trial_id"] in retried]
    bad_failed = [r["trial_id"] for r in rows if r["status"] == "failed" and failures.get(r["trial_id"], 0)
                  <= max_failures]
    late_on_victim = [r["trial_id"] for r in rows if label_of(r["node"], labels) == victim
                      and r["finished_at"].timestamp() > kill_time + 5]
    victim_state = next((x.get("state") for x in nodes() if victim and x["node_id"] == labels[victim]["node_id"]),
                        None)
    code_list, jobs = api("/api/jobs/")
    listed = code_list == 200 and any(j.get("submission_id") == s["job"] for j in jobs)
    code_noauth, _ = api("/api/jobs/", auth=False)
    t0 = s["t_start"]
    first = min((r["finished_at"].timestamp() for r in rows), default=None)
    checks = {
        "job_succeeded": job_status == "SUCCEEDED",
        "dashboard_api_lists_job": listed,
        "dashboard_api_refuses_no_token": code_noauth == 401,
        "rows_complete_count": len(rows) == n,
        "trial_ids_distinct": len(set(ids)) == len(ids),
        "no_failed_rows_with_retries_left": not bad_failed,
        "both_workers_ran_trials_before_kill": {"w1", "w2"} <= before,
        "kill_hit_running_trials": bool(retried),
        "retried_trials_complete_on_survivor": bool(retried_rows) and all(
            r["status"] == "complete" and label_of(r["node"], labels) == survivor for r in retried_rows),
        "retried_trials_stored": len(retried_rows) == len(retried),
        "nothing_finished_on_killed_node_after_kill": not late_on_victim,
        "killed_node_dead": victim_state == "DEAD",
        "head_ran_no_trials": by_node.get("head", 0) == 0,
    }
    return {
        "ok": all(checks.values()), "checks": checks, "job": s["job"], "job_status": job_status,
        "dashboard": s["dashboard"], "nodes": labels, "killed": victim, "survivor": survivor,
        "killed_processes": s.get("killed_processes"), "actors_on_killed_node_at_kill": s.get(
            "actors_on_victim_at_kill"), "rows_at_kill": s.get("rows_at_kill"), "rows": len(rows),
        "rows_by_status": by_status, "rows_by_node": by_node, "nodes_before_kill": sorted(map(str, before)),
        "retried": {t: {"failures": k, "node": label_of(next((r["node"] for r in rows if r["trial_id"] == t), None),
                                                         labels),
                        "status": next((r["status"] for r in rows if r["trial_id"] == t), None),
                        "cause": failure_cause(t)}
                    for t, k in retried.items()},
        "failed_with_retries_left": bad_failed, "finished_on_killed_node_after_kill": late_on_victim,
        "timings_s": {
            "cluster_up": round(s["t_cluster"] - t0, 1), "submitted": round(s["t_submit"] - t0, 1),
            "first_row": round(first - t0, 1) if first else None,
            "kill": round(kill_time - t0, 1) if kill_time != float("inf") else None,
            "job_end": round(s.get("job_end", time.time()) - t0, 1),
            "after_kill_to_end": round(s.get("job_end", time.time()) - kill_time, 1)
            if kill_time != float("inf") else None,
        },
        "workdir": os.environ["PROOF_WORK"],
    }


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "free-base":
        print(free_base(int(args[0])))
    elif cmd == "save":
        save(**json.loads(args[0]))
    elif cmd == "wait-nodes":
        wait_nodes(int(args[0]), float(args[1]))
    elif cmd == "job":
        print(json.dumps(job()))
    elif cmd == "wait-kill-point":
        wait_kill_point(int(args[0]), float(args[1]))
    elif cmd == "kill":
        print(json.dumps(kill(args[0], args[2:], float(args[1]))))
    elif cmd == "wait-job":
        wait_job(float(args[0]))
    elif cmd == "summary":
        out = summary(args[0], int(args[1]))
        text = json.dumps(out, indent=1, default=str)
        with open(os.path.join(os.environ["PROOF_WORK"], "summary.json"), "w") as f:
            f.write(text + "\n")
        print(text)
        sys.exit(0 if out["ok"] else 1)
    else:
        sys.exit("unknown helper command " + cmd)
PY
base="$(h free-base 400)"
gcs=$base dash=$((base + 1)) client=$((base + 2))
dashboard="http://127.0.0.1:$dash"
h save "{\"t_start\": $t_start, \"dashboard\": \"$dashboard\"}"
node_ports() {  # node index k: its own node manager, object manager, agents, metrics and worker ports
    local k=$1 p=$((base + 10 + 10 * $1)) w=$((base + 100 + 100 * $1))
    echo --node-ip-address=127.0.0.1 --node-manager-port=$p --object-manager-port=$((p + 1)) \
        --metrics-export-port=$((p + 2)) --dashboard-agent-grpc-port=$((p + 3)) \
        --dashboard-agent-listen-port=$((p + 4)) --runtime-env-agent-port=$((p + 5)) \
        --min-worker-port=$w --max-worker-port=$((w + 99)) --object-store-memory=$((256 * 1024 * 1024)) \
        --disable-usage-stats
}

log "workdir $work, Ray temp dirs $tmp/{h,w1,w2}, ports $base-$((base + 399)), token auth on"
cerebellum-ray make-tiny --arch gemma4 "$work/tiny.gguf" >&2

# shellcheck disable=SC2046
PROOF_NODE_DIR="$tmp/h" ray start --head --temp-dir="$tmp/h" --port="$gcs" --dashboard-host=127.0.0.1 \
    --dashboard-port="$dash" --ray-client-server-port="$client" --num-cpus=0 --num-gpus=0 \
    $(node_ports 0) >"$work/ray-start-head.log" 2>&1 || { cat "$work/ray-start-head.log" >&2; exit 1; }
for k in 1 2; do
    # shellcheck disable=SC2046
    PROOF_NODE_DIR="$tmp/w$k" ray start --address="127.0.0.1:$gcs" --temp-dir="$tmp/w$k" --num-cpus=1 \
        --num-gpus=2 --resources="{\"proof_w$k\": 1}" $(node_ports "$k") >"$work/ray-start-w$k.log" 2>&1 \
        || { cat "$work/ray-start-w$k.log" >&2; exit 1; }
done
log "nodes: $(h wait-nodes 3 120)"
h save "{\"t_cluster\": $(date +%s.%N)}"

job="proof-$(date +%s)-$$"
h save "{\"job\": \"$job\"}"
# the job's environment reaches its trials: absolute paths stay valid, trial GGUFs go under WORKDIR (a trial killed
# mid-build leaves its partial file there, not in a shared /tmp)
runtime_env="$(python -c 'import json, sys; print(json.dumps({"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0",
    "CEREBELLUM_WORK_DIR": sys.argv[1]}}))' "$work/trials")"
ray job submit --address "$dashboard" --no-wait --submission-id "$job" --runtime-env-json "$runtime_env" -- \
    cerebellum-ray search --space "$repo/search_spaces/tiny-gemma4.yaml" --source "$work/tiny.gguf" \
    --study "$study" --store "$store" --cache-dir "$work/cache" --trials "$trials" --address auto \
    --gpus-per-trial 0.5 --cpus-per-trial 0.5 --max-failures "$max_failures" --scheduler none --json >&2
h save "{\"t_submit\": $(date +%s.%N)}"
log "submitted $job; the dashboard's HTTP API says: $(h job | python -c 'import json,sys; j=json.load(sys.stdin); print(j.get("status"), j.get("entrypoint", "")[:60] + "...")')"

# once >= PROOF_KILL_AFTER rows are stored, both workers among them, and a worker runs trials right now: SIGKILL
# that worker's raylet, agents and trial workers (every process of its `ray start`)
log "worker killed: $(h wait-kill-point "$kill_after" "$job_timeout")"

status="$(h wait-job "$job_timeout")"
log "job $job: $status"
ray job status --address "$dashboard" "$job" 2>&1 | grep -v "^$" | tail -n 2 >&2 || true
ray job logs --address "$dashboard" "$job" >"$work/job.log" 2>&1 || true
h summary "$status" "$max_failures"
