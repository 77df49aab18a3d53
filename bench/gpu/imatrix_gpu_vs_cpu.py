"""An importance matrix collected with every layer on the GPU against one collected on the CPU (device check).

    python bench/gpu/imatrix_gpu_vs_cpu.py

On the GPU the activations live in device memory, so the collector copies them out (ggml_backend_tensor_get) instead
of reading them in place; this shows that path gives the CPU's statistics up to the GPU's float rounding, on the tiny
gemma4 (MoE: per-expert counts) and the tiny llama. Prints Markdown.
"""

from __future__ import annotations

import time
from pathlib import Path

import llama_cpp  # noqa: F401  (before numpy: ../shared/notes/gpu.md)
import numpy as np

from cerebellum_ray.evaluate.imatrix_collect import CollectSettings, collect_stats, default_calibration_text
from cerebellum_ray.formats.tiny import make_tiny

WORK = Path("bench/out/gpu/imatrix")


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    text = default_calibration_text()
    print("| model | entries | GPU s | CPU s | counts equal | max relative difference | median relative difference |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for arch in ("gemma4", "llama"):
        model = make_tiny(arch, WORK / f"tiny-{arch}.gguf")
        runs = {}
        for where, layers in (("gpu", 999), ("cpu", 0)):
            t0 = time.perf_counter()
            runs[where] = collect_stats(model, text, CollectSettings(n_ctx=128, n_chunks=8, n_gpu_layers=layers))
            runs[where + "_s"] = time.perf_counter() - t0
        gpu, cpu = runs["gpu"].stats, runs["cpu"].stats
        assert gpu.keys() == cpu.keys(), sorted(set(gpu) ^ set(cpu))
        counts_equal = all(np.array_equal(gpu[k][1], cpu[k][1]) for k in gpu)
        rel = np.concatenate([np.abs(gpu[k][0] - cpu[k][0]) / np.maximum(np.abs(cpu[k][0]), 1e-12) for k in gpu])
        print(f"| tiny {arch} | {len(gpu)} | {runs['gpu_s']:.1f} | {runs['cpu_s']:.1f} | {counts_equal} | "
              f"{rel.max():.2e} | {np.median(rel):.2e} |")


if __name__ == "__main__":
    main()
