"""Benchmark and screenshots: the report and the plot pages of a study in headless Chromium (cerebellum_ray.results.
browser): console errors, network requests, load time, and a PNG of each page.

    python bench/bench_pages.py [--store DIR --study S] [--out bench/out/pages]

Without --store: a small real study first (the tiny Gemma-4-style MoE, two llama.cpp presets and 8 Optuna trials on
a local Ray, about a minute). Writes report.html, front.html (size vs KLD), front3d.html (size, KLD, PPL) and
front.png under --out, then one screenshot per page (*.page.png); bench/out/ is ignored by git. Prints Markdown for
bench/RESULTS.md; exits 1 when a page is not clean.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import llama_cpp  # noqa: F401  (before numpy)


def small_study(out: Path) -> tuple[str, str]:
    from cerebellum_ray.formats.tiny import make_tiny, make_tiny_imatrix
    from cerebellum_ray.study.search import SearchOptions, run_search

    source = make_tiny("gemma4", out / "tiny-gemma4.gguf", seed=0)
    imatrix = make_tiny_imatrix(source, out / "tiny-gemma4.imatrix", seed=0)
    space = Path(__file__).resolve().parents[1] / "search_spaces" / "tiny-gemma4.yaml"
    common = dict(space_file=str(space), source=str(source), study="pages", store_dir=str(out / "store"),
                  imatrix=str(imatrix), cache_dir=str(out / "cache"), verbose=False, num_cpus=2, seed=0)
    run_search(SearchOptions(strategy="presets", presets=("Q3_K_M", "Q4_K_M"), **common))
    run_search(SearchOptions(strategy="optuna", trials=8, scheduler="none", **common))
    return str(out / "store"), "pages"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store")
    ap.add_argument("--study")
    ap.add_argument("--out", default="bench/out/pages")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store_dir, study = (args.store, args.study) if args.store else small_study(out)
    study_s = time.perf_counter() - t0

    from cerebellum_ray.cli import main as cli
    from cerebellum_ray.results.browser import check_page

    pages = [out / "report.html", out / "front.html", out / "front3d.html"]
    if cli(["report", "--store", store_dir, "--study", study, "--out", str(pages[0])]) != 0:
        return 2
    if cli(["pareto", "--store", store_dir, "--study", study, "--plot", str(pages[1]), "--plot",
            str(out / "front.png")]) != 0:
        return 2
    if cli(["pareto", "--store", store_dir, "--study", study, "--y", "kld", "--y", "ppl", "--plot",
            str(pages[2])]) != 0:
        return 2
    results = [check_page(p, p.with_suffix(".page.png"), wait=1.5) for p in pages]
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} cores, {results[0].browser}; `python "
          f"bench/bench_pages.py{' --store ' + args.store + ' --study ' + args.study if args.store else ''}` "
          f"({time.strftime('%Y-%m-%d')}); study {'given' if args.store else f'made in {study_s:.0f} s'}\n")
    print("| page | size | clean | load + check s | console errors | warnings | requests | drawn | screenshot |")
    print("|---|---:|---|---:|---:|---:|---:|---|---|")
    for page, r in zip(pages, results):
        drawn = (f"{r.probe['plots']} plotly plot, plotly.js {r.probe['plotly']}" if r.probe["plots"]
                 else f"{r.probe['images']} images, {r.probe['broken_images']} broken")
        print(f"| {page.name} | {page.stat().st_size / 1e6:.2f} MB | {'yes' if r.clean else 'NO'} | {r.seconds:.1f} | "
              f"{len(r.errors)} | {len(r.console) - len(r.errors)} | {len(r.requests)} | {drawn} | "
              f"{Path(r.screenshot).name} |")
    bad = [p for p, r in zip(pages, results) if not r.clean]
    for page, r in zip(pages, results):
        for problem in r.problems():
            print(f"{page.name}: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
