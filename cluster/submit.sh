#!/usr/bin/env bash
# Submit a cerebellum-ray search to a running cluster as a Ray job (token authentication on).
#
#   cluster/submit.sh [--head HOST | --address http://HOST:8265] [--no-wait] [--submission-id ID]
#                     [--entrypoint-num-gpus N] [--dry-run] -- SEARCH ARGS...
#
# SEARCH ARGS go to `cerebellum-ray search` unchanged; `--address auto` is added unless they name an address.
# Head: --address, else RAY_ADDRESS (http://HOST:8265), else RAY_HEAD (a host name or IP; port DASHBOARD_PORT).
# Token: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (a copy of the head's); exported
#        as RAY_AUTH_TOKEN with RAY_AUTH_MODE=token, without which `ray job submit` sends no token and gets 401.
# The repository root is uploaded as the job's working directory (its code runs on the cluster, on top of the
# nodes' virtualenvs) and cluster/runtime_env.yaml is the runtime environment. Paths the cluster must find
# (--source, --store, --storage-path, --imatrix, --reference, --cache-dir) must be absolute (or s3:// for
# --storage-path): a relative one would land in the job's temporary directory on the head. --space may be relative
# to the repository root.
# --entrypoint-num-gpus N: reserve GPUs for the driver (its reference pass) instead of sharing the head's GPUs.
# --dry-run: print the command instead of running it (the token is never printed).
#
# Example:
#   RAY_HEAD=10.0.0.10 cluster/submit.sh -- --space search_spaces/my-model.yaml --source /models/my-model-f16.gguf \
#       --study my-model-1 --store /mnt/shared/cerebellum/store --storage-path /mnt/shared/cerebellum/tune \
#       --gpus-per-trial 0.25 --cpus-per-trial 2
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/common.sh
. "$here/common.sh"

address="" dry_run=0
submit_opts=()
while (($#)); do
    case "$1" in
        --head) address="http://$2:$DASHBOARD_PORT"; shift 2 ;;
        --head=*) address="http://${1#*=}:$DASHBOARD_PORT"; shift ;;
        --address) address="$2"; shift 2 ;;
        --address=*) address="${1#*=}"; shift ;;
        --no-wait) submit_opts+=(--no-wait); shift ;;
        --submission-id|--entrypoint-num-gpus|--entrypoint-num-cpus) submit_opts+=("$1" "$2"); shift 2 ;;
        --submission-id=*|--entrypoint-num-gpus=*|--entrypoint-num-cpus=*) submit_opts+=("$1"); shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        --) shift; break ;;
        *) break ;;  # the first argument that is not ours starts the search arguments
    esac
done
search=("$@")
((${#search[@]})) || die "no search arguments (cluster/submit.sh [options] -- --space ... --source ... --study ... --store ...)"

if [[ -z "$address" ]]; then
    if [[ "${RAY_ADDRESS:-}" == http*://* ]]; then
        address="$RAY_ADDRESS"
    elif [[ -n "${RAY_HEAD:-}" ]]; then
        address="http://$RAY_HEAD:$DASHBOARD_PORT"
    else
        die "which cluster? pass --head HOST or --address http://HOST:$DASHBOARD_PORT, or set RAY_HEAD"
    fi
fi
[[ "$address" == http*://* ]] || die "--address must be the dashboard's URL, http://HOST:$DASHBOARD_PORT (got '$address')"

# Check the paths the cluster resolves, and whether the search already names a Ray address.
has_address=0 has_storage=0
for ((i = 0; i < ${#search[@]}; i++)); do
    arg="${search[i]}"
    name="${arg%%=*}"
    if [[ "$arg" == *=* ]]; then value="${arg#*=}"; else value="${search[i + 1]:-}"; fi
    case "$name" in
        --address) has_address=1 ;;
        --storage-path)
            has_storage=1
            [[ "$value" == /* || "$value" == *://* ]] || die "--storage-path must be absolute or a URI such as s3://bucket/path, got '$value'" ;;
        --source|--store|--imatrix|--reference|--cache-dir)
            [[ "$value" == /* ]] || die "$name must be an absolute path on the cluster's nodes, got '$value'" ;;
    esac
done
((has_address)) || search+=(--address auto)
((has_storage)) || echo "note: no --storage-path: Ray Tune writes to <store>/_tune, which must then be on storage every node shares" >&2

require_token_mode
ray_bin="$(find_ray)"
cd "$here/.."  # the repository root: uploaded as the working directory
cmd=("$ray_bin" job submit --address "$address" --runtime-env cluster/runtime_env.yaml --working-dir .
     "${submit_opts[@]}" -- cerebellum-ray search "${search[@]}")

if ((dry_run)); then
    print_cmd env RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... "${cmd[@]}"
    exit 0
fi
find_token || die "no authentication token: export RAY_AUTH_TOKEN=\$(ssh HEAD cat .ray/auth_token), or copy the head's \
~/.ray/auth_token here (chmod 600)"
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    RAY_AUTH_TOKEN="$(<"$TOKEN_SOURCE")"
fi
export RAY_AUTH_TOKEN
exec "${cmd[@]}"
