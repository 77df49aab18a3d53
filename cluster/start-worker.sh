#!/usr/bin/env bash
# Join this machine to a cerebellum-ray cluster started with start-head.sh, with token authentication on.
#
#   cluster/start-worker.sh HEAD_IP[:PORT] [--num-gpus N] [--num-cpus N] [--node-ip IP] [--dry-run] [--local]
#                           [-- EXTRA RAY START ARGS]
#
# The token must be the head's: RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, e.g.
#     scp HEAD:.ray/auth_token ~/.ray/auth_token && chmod 600 ~/.ray/auth_token
# (a worker never creates one: a new token would not match the head's and the worker would be refused).
# GPUs: counted with nvidia-smi (or CUDA_VISIBLE_DEVICES) unless --num-gpus is given.
# The source model must be at the same path as on the head (or on shared storage); the tensor cache is local
# (CEREBELLUM_CACHE, default /var/tmp/cerebellum-ray/tensors).
# --local: a second node on this machine for a throwaway check (Ray picks free ports, 1 CPU, 0 GPUs); give it a
#          temp dir of its own (-- --temp-dir=DIR): two nodes sharing one would delete each other's job files.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/common.sh
. "$here/common.sh"

parse_node_options "$@"
((${#POSITIONAL[@]} <= 1)) || die "one head address, got '${POSITIONAL[0]}' and '${POSITIONAL[1]}'"
head="${POSITIONAL[0]:-}"
num_gpus="$NUM_GPUS" num_cpus="$NUM_CPUS" node_ip="$NODE_IP" dry_run=$DRY_RUN local_mode=$LOCAL_MODE
extra=("${EXTRA_ARGS[@]}")
[[ -n "$head" ]] || die "usage: start-worker.sh HEAD_IP[:PORT] [options] (see --help)"
[[ "$head" == *:* ]] || head="$head:$RAY_PORT"

load_env_file
require_token_mode
ray_bin="$(find_ray)"

VRAM_GB=0
if ((local_mode)); then
    node_ip="127.0.0.1"
    num_cpus="${num_cpus:-1}"
    num_gpus="${num_gpus:-0}"
    PORT_ARGS=()  # a second raylet on this host: the pinned ports are the head's
else
    detect_gpus
    num_gpus="${num_gpus:-$NUM_GPUS_DETECTED}"
    node_port_args
fi
[[ "$num_gpus" =~ ^[0-9]+$ ]] || die "--num-gpus must be a whole number, got '$num_gpus'"

args=(start --address="$head" "${PORT_ARGS[@]}" --num-gpus="$num_gpus" --resources="{\"vram_gb\": $VRAM_GB}")
[[ -n "$num_cpus" ]] && args+=(--num-cpus="$num_cpus")
[[ -n "$node_ip" ]] && args+=(--node-ip-address="$node_ip")
args+=(--disable-usage-stats "${extra[@]}")

if ((dry_run)); then
    print_cmd env RAY_AUTH_MODE=token CEREBELLUM_CACHE="$CEREBELLUM_CACHE" "$ray_bin" "${args[@]}"
    exit 0
fi

find_token || die "no authentication token: copy the head's ~/.ray/auth_token here (scp HEAD:.ray/auth_token \
~/.ray/auth_token && chmod 600 ~/.ray/auth_token), or export RAY_AUTH_TOKEN"
echo "token authentication: on (token from $TOKEN_SOURCE)"
mkdir -p "$CEREBELLUM_CACHE" "$CEREBELLUM_WORK_DIR"

"$ray_bin" "${args[@]}"
echo "joined $head with ${num_gpus} GPUs; tensor cache ${CEREBELLUM_CACHE}"
