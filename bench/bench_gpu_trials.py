"""Fractional-GPU trials: the same search with `--gpus-per-trial 0.25` (four trials share the GPU) and `1`.

    python bench/bench_gpu_trials.py [--trials 24] [--model PATH] [--workdir DIR]

Runs on a machine with one GPU. The source is a random model with Gemma 3 270M's sizes on the llama architecture
(`make-tiny --arch llama --shape llama-270m`: hidden 640, 18 layers, 262k vocabulary; made here when --model is not
given), searched with `search_spaces/gemma3-270m.yaml`'s dimensions and evaluation (text KLD, 6 chunks of 256).
Each setting gets the machine's CPUs split evenly between its concurrent trials (0.25 GPU: 4 trials x cpus/4;
1 GPU: 1 trial x all cpus), no early stopping, and the same number of trials; trials per hour are counted from the
first trial's start to the last trial's finish, from the store (as bench_throughput.py does). Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def throughput(store_dir: Path, study: str) -> tuple[int, float, float]:
    """(trials, wall seconds, median trial seconds) of a study, from the store."""
    import statistics

    from cerebellum_ray.core import store

    rows = [r for r in store.rows(store_dir, [study]) if r["started_at"] and r["finished_at"]]
    wall = (max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)).total_seconds()
    spans = [(r["finished_at"] - r["started_at"]).total_seconds() for r in rows]
    return len(rows), wall, statistics.median(spans)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--model")
    ap.add_argument("--workdir", default="/tmp/cerebellum-gpu-trials")
    args = ap.parse_args()
    from cerebellum_ray.study.run import SearchOptions
    from cerebellum_ray.study.strategies import run_search
    from cerebellum_ray.formats.tiny import make_tiny

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else work / "llama-270m.gguf"
    if not model.exists():
        make_tiny("llama", model, shape="llama-270m")
    space = work / "space.yaml"
    space.write_text((ROOT / "search_spaces" / "gemma3-270m.yaml").read_text())
    cpus = os.cpu_count() or 1
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True).stdout.strip() or "no GPU visible"
    except FileNotFoundError:
        gpu = "no nvidia-smi (a dry run on CPUs)"
    print(f"Machine: {platform.machine()}, {cpus} CPUs, {gpu}; source {model.name} ({model.stat().st_size / 1e6:.0f} "
          f"MB); `python bench/bench_gpu_trials.py --trials {args.trials}` ({time.strftime('%Y-%m-%d')})\n")
    print("| GPUs per trial | CPUs per trial | trials at once | trials | wall s | trials per hour | median trial s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    for gpus in (0.25, 1.0):
        at_once = int(round(1 / gpus))
        store_dir = work / f"store-{gpus}"
        for d in (store_dir, work / f"cache-{gpus}"):
            shutil.rmtree(d, ignore_errors=True)
        study = f"gpu-{gpus}"
        opts = SearchOptions(space_file=str(space), source=str(model), study=study, store_dir=str(store_dir),
                             trials=args.trials, gpus_per_trial=gpus, cpus_per_trial=max(1, cpus // at_once),
                             max_concurrent=at_once, scheduler="none", num_cpus=cpus, num_gpus=1, verbose=False,
                             cache_dir=str(work / f"cache-{gpus}"), seed=0)  # each setting starts cold
        run_search(opts)
        import ray

        ray.shutdown()
        n, wall, median = throughput(store_dir, study)
        results[gpus] = 3600 * n / wall
        print(f"| {gpus:g} | {opts.cpus_per_trial:g} | {at_once} | {n} | {wall:.1f} | {results[gpus]:.0f} | "
              f"{median:.2f} |")
    print(f"\nfractional (0.25) vs whole GPU per trial: {results[0.25] / results[1.0]:.2f}x trials per hour")


if __name__ == "__main__":
    main()
