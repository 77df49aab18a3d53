#!/usr/bin/env bash
# Start the head node of a plain `ray start` cluster for cerebellum-ray, with token authentication on.
#
#   cluster/start-head.sh [--num-gpus N] [--num-cpus N] [--node-ip IP] [--dry-run] [--local] [-- EXTRA RAY START ARGS]
#
# GPUs: counted with nvidia-smi (or CUDA_VISIBLE_DEVICES) unless --num-gpus is given.
# CPUs: all but HEAD_RESERVED_CPUS (default 2), left to the search driver (reference pass, Optuna, the store).
# Token: RAY_AUTH_TOKEN, else RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; created there (mode 600) if none exists.
#        Copy that file to every worker (~/.ray/auth_token, mode 600) before running start-worker.sh there.
# Ports: see common.sh (override with the environment, e.g. DASHBOARD_PORT=8266); table in cluster/README.md.
# --local: a throwaway check on this machine: 127.0.0.1 only, 1 CPU, 0 GPUs, token auth still on. Stop with `ray stop`
#          (which stops every Ray on the machine). Beside other Ray instances add `-- --temp-dir=DIR` and other ports.
# --dry-run: print the `ray start` command and exit (nothing is started, no token is created).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/common.sh
. "$here/common.sh"

parse_node_options "$@"
((${#POSITIONAL[@]} == 0)) || die "unexpected argument '${POSITIONAL[0]}' (pass ray start options after --)"
num_gpus="$NUM_GPUS" num_cpus="$NUM_CPUS" node_ip="$NODE_IP" dry_run=$DRY_RUN local_mode=$LOCAL_MODE
extra=("${EXTRA_ARGS[@]}")
dashboard_host="${DASHBOARD_HOST:-0.0.0.0}"

load_env_file
require_token_mode
ray_bin="$(find_ray)"

if ((local_mode)); then
    node_ip="127.0.0.1"
    dashboard_host="127.0.0.1"
    num_cpus="${num_cpus:-1}"
    num_gpus="${num_gpus:-0}"
fi
VRAM_GB=0
if ((!local_mode)); then
    detect_gpus
    num_gpus="${num_gpus:-$NUM_GPUS_DETECTED}"
fi
[[ "$num_gpus" =~ ^[0-9]+$ ]] || die "--num-gpus must be a whole number, got '$num_gpus'"
if [[ -z "$num_cpus" ]]; then
    total=$(nproc)
    reserved="${HEAD_RESERVED_CPUS:-2}"
    num_cpus=$((total > reserved ? total - reserved : 1))
fi

node_port_args
args=(
    start --head
    --port="$RAY_PORT"
    --dashboard-host="$dashboard_host"
    --dashboard-port="$DASHBOARD_PORT"
    --ray-client-server-port="$CLIENT_PORT"
    "${PORT_ARGS[@]}"
    --num-cpus="$num_cpus"
    --num-gpus="$num_gpus"
    --resources="{\"vram_gb\": $VRAM_GB}"
    --disable-usage-stats
)
[[ -n "$node_ip" ]] && args+=(--node-ip-address="$node_ip")
args+=("${extra[@]}")

if ((dry_run)); then
    print_cmd env RAY_AUTH_MODE=token CEREBELLUM_CACHE="$CEREBELLUM_CACHE" "$ray_bin" "${args[@]}"
    exit 0
fi

if ! find_token; then
    target="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    mkdir -p "$(dirname "$target")"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$target")
    echo "created a new authentication token in $target"
    find_token
fi
echo "token authentication: on (token from $TOKEN_SOURCE)"
mkdir -p "$CEREBELLUM_CACHE" "$CEREBELLUM_WORK_DIR"

"$ray_bin" "${args[@]}"

shown_ip="${node_ip:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
cat <<EOF

head started: ${num_cpus} CPUs, ${num_gpus} GPUs, tensor cache ${CEREBELLUM_CACHE}
  dashboard / Jobs API : http://${shown_ip}:${DASHBOARD_PORT}  (paste the token when the page asks; or ssh -L ${DASHBOARD_PORT}:localhost:${DASHBOARD_PORT})
  metrics (Prometheus) : http://${shown_ip}:${METRICS_PORT}/metrics; every node: /tmp/ray/prom_metrics_service_discovery.json
  token                : ${TOKEN_SOURCE}
on every worker, with the same token in ~/.ray/auth_token (scp it, chmod 600):
  cluster/start-worker.sh ${shown_ip}:${RAY_PORT}
submit a search:
  RAY_HEAD=${shown_ip} cluster/submit.sh -- --space SPACE.yaml --source /models/MODEL.gguf --study NAME --store /shared/store
EOF
