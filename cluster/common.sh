# Shared by start-head.sh, start-worker.sh and submit.sh (sourced, not run): ports, GPU detection, the auth token.
# Every port is pinned so that a firewall can be written for it; cluster/README.md has the table.
# shellcheck shell=bash disable=SC2034  # variables set here are read by the scripts that source this file

: "${RAY_PORT:=6379}"                      # GCS (head only); workers join HEAD:RAY_PORT
: "${DASHBOARD_PORT:=8265}"                # dashboard and Jobs API (head only)
: "${CLIENT_PORT:=10001}"                  # Ray Client server (head only)
: "${METRICS_PORT:=8080}"                  # Prometheus metrics of this node (every node)
: "${OBJECT_MANAGER_PORT:=8076}"           # every node
: "${NODE_MANAGER_PORT:=8077}"             # raylet, every node
: "${DASHBOARD_AGENT_GRPC_PORT:=8078}"     # every node
: "${RUNTIME_ENV_AGENT_PORT:=8079}"        # every node
: "${DASHBOARD_AGENT_LISTEN_PORT:=52365}"  # every node (HTTP, the dashboard reads it)
: "${MIN_WORKER_PORT:=10002}"              # worker processes (one port each), every node
: "${MAX_WORKER_PORT:=10999}"
: "${CEREBELLUM_CACHE:=/var/tmp/cerebellum-ray/tensors}"  # per-node tensor cache (local disk)
export CEREBELLUM_CACHE
# A local directory for the trials' candidate GGUFs on every node (cerebellum-ray reads CEREBELLUM_WORK_DIR; its
# default is the temp dir): written and deleted once per trial, so it belongs on local disk.
: "${CEREBELLUM_WORK_DIR:=/var/tmp/cerebellum-ray/work}"
export CEREBELLUM_WORK_DIR

die() { echo "error: $*" >&2; exit 2; }

# The options start-head.sh and start-worker.sh share. Sets NUM_GPUS NUM_CPUS NODE_IP DRY_RUN LOCAL_MODE,
# EXTRA_ARGS (everything after --, for `ray start`) and POSITIONAL (the other arguments, e.g. the head address).
parse_node_options() {
    NUM_GPUS="" NUM_CPUS="" NODE_IP="" DRY_RUN=0 LOCAL_MODE=0
    EXTRA_ARGS=() POSITIONAL=()
    while (($#)); do
        case "$1" in
            --num-gpus|--num-cpus|--node-ip)
                (($# >= 2)) || die "$1 needs a value"
                set -- "$1=$2" "${@:3}"
                continue ;;
            --num-gpus=*) NUM_GPUS="${1#*=}" ;;
            --num-cpus=*) NUM_CPUS="${1#*=}" ;;
            --node-ip=*) NODE_IP="${1#*=}" ;;
            --dry-run) DRY_RUN=1 ;;
            --local) LOCAL_MODE=1 ;;
            -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
            --) shift; EXTRA_ARGS+=("$@"); break ;;
            -*) die "unknown option $1 (pass ray start options after --)" ;;
            *) POSITIONAL+=("$1") ;;
        esac
        shift
    done
}

# Environment for the raylet and so for every worker process it starts (S3/MinIO credentials, proxies, ...).
load_env_file() {
    local file="${CEREBELLUM_ENV_FILE:-/etc/cerebellum-ray/env}"
    if [[ -r "$file" ]]; then
        echo "loading environment from $file"
        set -a
        # shellcheck disable=SC1090
        . "$file"
        set +a
    fi
}

find_ray() {
    if [[ -n "${RAY_BIN:-}" ]]; then
        echo "$RAY_BIN"
    elif [[ -x "$HOME/cerebellum-venv/bin/ray" ]]; then
        echo "$HOME/cerebellum-venv/bin/ray"
    elif command -v ray >/dev/null 2>&1; then
        command -v ray
    else
        die "no 'ray' found: activate the project's virtualenv or set RAY_BIN=/path/to/venv/bin/ray"
    fi
}

# GPUs this node offers: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists, else none.
# NVIDIA_SMI_IDS restricts nvidia-smi to those devices for the VRAM query.
detect_gpus() {
    NUM_GPUS_DETECTED=0
    VRAM_GB=0
    NVIDIA_SMI_IDS=()
    if [[ -n "${CUDA_VISIBLE_DEVICES+x}" ]]; then
        if [[ -n "$CUDA_VISIBLE_DEVICES" ]]; then
            local ids
            IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
            NUM_GPUS_DETECTED=${#ids[@]}
            NVIDIA_SMI_IDS=(--id="$CUDA_VISIBLE_DEVICES")
        fi
    elif command -v nvidia-smi >/dev/null 2>&1; then
        if ! NUM_GPUS_DETECTED=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU '); then
            echo "warning: nvidia-smi lists no GPU (driver not loaded?): starting with 0 GPUs" >&2
            NUM_GPUS_DETECTED=0
        fi
    fi
    if ((NUM_GPUS_DETECTED > 0)) && command -v nvidia-smi >/dev/null 2>&1; then
        local line
        while IFS= read -r line; do
            echo "  GPU ${line}"
        done < <(nvidia-smi "${NVIDIA_SMI_IDS[@]}" --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null)
        VRAM_GB=$(nvidia-smi "${NVIDIA_SMI_IDS[@]}" --query-gpu=memory.total --format=csv,noheader,nounits \
            2>/dev/null | awk '{ s += int($1 / 1024) } END { print s + 0 }')
    fi
}

# The token: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (Ray's own order).
# Sets TOKEN_SOURCE; returns 1 when there is none (or RAY_AUTH_TOKEN_PATH names a missing or empty file).
find_token() {
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        TOKEN_SOURCE="the RAY_AUTH_TOKEN environment variable"
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || return 1
        TOKEN_SOURCE="$RAY_AUTH_TOKEN_PATH"
    elif [[ -s "$HOME/.ray/auth_token" ]]; then
        TOKEN_SOURCE="$HOME/.ray/auth_token"
    else
        return 1
    fi
    if [[ "$TOKEN_SOURCE" == /* ]] && [[ "$(stat -c %a "$TOKEN_SOURCE")" != 600 ]]; then
        echo "warning: $TOKEN_SOURCE is readable by others: chmod 600 $TOKEN_SOURCE" >&2
    fi
    return 0
}

# Token authentication stays on: refuse RAY_AUTH_MODE=disabled here (see cluster/README.md for why).
require_token_mode() {
    case "${RAY_AUTH_MODE:-token}" in
        token) ;;
        disabled) die "RAY_AUTH_MODE=disabled: these scripts keep token authentication on (cluster/README.md)" ;;
        *) die "RAY_AUTH_MODE=${RAY_AUTH_MODE} is not supported by these scripts (use token)" ;;
    esac
    export RAY_AUTH_MODE=token
}

# Ports every node binds (the head adds its own).
node_port_args() {
    PORT_ARGS=(
        --object-manager-port="$OBJECT_MANAGER_PORT"
        --node-manager-port="$NODE_MANAGER_PORT"
        --dashboard-agent-grpc-port="$DASHBOARD_AGENT_GRPC_PORT"
        --dashboard-agent-listen-port="$DASHBOARD_AGENT_LISTEN_PORT"
        --runtime-env-agent-port="$RUNTIME_ENV_AGENT_PORT"
        --metrics-export-port="$METRICS_PORT"
        --min-worker-port="$MIN_WORKER_PORT"
        --max-worker-port="$MAX_WORKER_PORT"
    )
}

print_cmd() {
    printf '%q ' "$@"
    printf '\n'
}
