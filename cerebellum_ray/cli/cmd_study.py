"""Commands that run or read a study: search, prior, solve, demo."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError
from .options import (Command, cache_dir_option, cpus, fraction_of_gpus, human, imatrix_option, json_option,
                      non_negative, positive, print_json, stdout_to_stderr, store_option, study_option)

__all__ = ["COMMANDS", "cmd_demo", "cmd_prior", "cmd_search", "cmd_solve"]


def _search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search space YAML (see search_spaces/README.md)")
    p.add_argument("--source", required=True, help="the full-precision source GGUF (same path on every node)")
    from ..study.strategies import STRATEGIES

    p.add_argument("--strategy", choices=list(STRATEGIES), default="optuna",
                   help="guided (recommended: prior, sensitivities, a surrogate and an exact budget solver; see the "
                        "README), optuna (NSGA-II/TPE), the card's ablation procedure, llama.cpp presets as reference "
                        "points, or one fixed map (--map)")
    p.add_argument("--presets", help="presets for --strategy presets (default Q2_K,Q3_K_S,...,Q8_0)")
    p.add_argument("--map", help="precision map file for --strategy fixed (e.g. search_spaces/cerebellum-v6.yaml)")
    p.add_argument("--base", metavar="PRESET", help="a llama.cpp preset to start from instead of the space's base "
                   "(e.g. --strategy ablation --base Q3_K_M)")
    p.add_argument("--warm-start", action="append", metavar="STUDY",
                   help="seed a new Optuna study with the finished trials of STUDY (e.g. an ablation; repeatable)")
    p.add_argument("--trials", type=positive, help="number of trials, at least 1 (default: the space's search.trials)")
    p.add_argument("--reference", help="reference model for KLD (default: the source)")
    p.add_argument("--gpus-per-trial", type=fraction_of_gpus, default=0.0, help="GPU fraction per trial, e.g. 0.25")
    p.add_argument("--cpus-per-trial", type=cpus, default=1.0)
    p.add_argument("--max-concurrent", type=positive, help="trials at once (default: what the resources allow)")
    p.add_argument("--scheduler", choices=["dominance", "asha", "none"], default="dominance",
                   help="early stopping: dominated-so-far (default), ASHA on KLD/PPL, or none")
    p.add_argument("--max-failures", type=non_negative, default=2, help="retries of a failing trial")
    p.add_argument("--resume", action="store_true", help="continue the study after the driver was stopped")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--storage-path", help="Ray Tune storage (shared path or s3://) for multi-node clusters")
    p.add_argument("--seed", type=non_negative)
    p.add_argument("--num-cpus", type=positive, help="CPUs of a local Ray (default: all)")
    p.add_argument("--num-gpus", type=fraction_of_gpus, help="GPUs of a local Ray (default: detected)")


def cmd_search(args) -> int:
    from ..study.strategies import run_search

    with stdout_to_stderr(args.json):
        result = run_search(_search_options(args))
    summary = _study_summary(result.store_dir, result.study)
    if args.json:
        print_json({**vars(result), **summary})
    else:
        _print_study_summary(summary, result.store_dir)
    return 0


def _prior_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True)
    p.add_argument("--source", required=True)


def cmd_prior(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..formats.catalog import load_catalog
    from ..study.guided import study_prior
    from ..formats.space import load_space

    catalog = load_catalog(args.source)
    space = load_space(args.space, catalog)
    prior = study_prior(space, catalog, args.source, args.imatrix, args.cache_dir)
    table = prior.table
    if args.json:
        print_json({"space": space.name, "source": args.source, "imatrix": args.imatrix,
                     "computed": prior.computed, "cached": prior.from_cache,
                     "choices": {p: {ty: {"error": prior.errors[p][ty], "bytes": prior.bytes[p][ty]}
                                     for ty in table.types[i]} for i, p in enumerate(table.params)}})
        return 0
    print(f"prior of space {space.name} on {args.source}: importance-weighted relative quantization error of every "
          f"choice ({prior.computed} computed, {prior.from_cache} from the cache)")
    width = max(len(p) for p in table.params)
    for i, p in enumerate(table.params):
        cells = "  ".join(f"{ty} {prior.errors[p][ty]:.3g}" for ty in table.types[i])
        print(f"  {p:<{width}}  {cells}")
    return 0


def _solve_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--max-bpw", type=float, help="bits per weight of the tensor data, e.g. 4.5")
    which.add_argument("--max-gb", type=float, help="file size in GB (10**9 bytes), e.g. 11.7")
    which.add_argument("--vram-gb", type=float, help="VRAM in GB the model and the KV cache of --context must fit")
    p.add_argument("--context", type=positive, help="tokens of F16 KV cache that must fit beside the model "
                                                     "(with --vram-gb)")
    p.add_argument("--warm-start", action="append", metavar="STUDY", help="fit on this study's rows too")
    p.add_argument("--metric", choices=["kld", "kld_code"], default="kld",
                   help="what the map minimizes: KLD on the study's text (default) or on its code corpus")
    p.add_argument("--out-map", help="write the map (every tensor -> type) as JSON, for build --map")
    p.add_argument("--imatrix", help="the imatrix (default: the study's; another must have its digest)")
    p.add_argument("--verify", action="store_true", help="measure the map as one trial of the study (one new row)")
    p.add_argument("--space", help="the space file (default: the one recorded with the study)")
    p.add_argument("--source", help="the source model (default: the one recorded with the study)")
    p.add_argument("--num-cpus", type=positive, help="CPUs of the local Ray for --verify")
    p.add_argument("--cpus-per-trial", type=cpus, default=1.0)
    p.add_argument("--gpus-per-trial", type=fraction_of_gpus, default=0.0)


def cmd_solve(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..formats.catalog import load_catalog
    from ..study.run import StudyRecord
    from ..results.recommend import make_budget, solve_study, verify_solution, within

    catalog = None
    if args.vram_gb is not None:
        source = args.source or StudyRecord.load(args.store, args.study).source
        catalog = load_catalog(source)
    budget = make_budget(args.max_bpw, args.max_gb, args.vram_gb, args.context, catalog)
    result = solve_study(args.store, args.study, budget, space_file=args.space, source=args.source,
                         warm_start=tuple(args.warm_start or ()), metric=args.metric, imatrix=args.imatrix)
    if args.verify:
        with stdout_to_stderr(args.json):
            row = verify_solution(args.store, result, space_file=args.space, source=args.source,
                                  num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                                  gpus_per_trial=args.gpus_per_trial, imatrix=args.imatrix)
        m = result.metric
        result = replace(result, verified={"trial_id": row["trial_id"], "kld": row["kld"], "kld_se": row["kld_se"],
                                           "kld_code": row["kld_code"], "kld_code_se": row["kld_code_se"],
                                           "ppl": row["ppl"], "within_2se": row[m] is not None
                                           and within(result.predicted, row[m], metric=m)})
    answer = result.answer
    if args.out_map:  # the answer's map: a measured row's when it beats the solved map
        from ..core.atomic import write_text

        write_text(args.out_map, json.dumps(answer["map"], indent=1) + "\n")
    if args.json:
        print_json(result.as_dict())
        return 0
    from ..core.units import value_text

    fit = result.fit
    print(f"study {result.study}, budget {result.budget}: the surrogate's best map (fitted on {fit['rows']} rows, "
          f"leave-one-out Spearman {fit['loo_spearman']:.2f}, {len(fit['interactions'])} interactions; "
          f"{result.seconds:.1f} s)")
    print(f"  size {human(result.size_bytes)} ({result.size_bytes} bytes as one file), {result.bpw:.4f} bits per "
          f"weight")
    m, label = result.metric, _SOLVE_LABELS[result.metric]
    print(f"  predicted {label} {value_text(result.predicted[m], result.predicted[m + '_se'])}"
          + _predicted_others(result.predicted, m) + f"  (the map minimizes the {label})")
    if result.measured is not None:
        measured = result.measured.get(m)
        print(f"  measured (trial {result.measured_trial}): {label} "
              + ("not scored" if measured is None else value_text(measured, result.measured.get(m + '_se') or 0)))
    else:
        print("  this exact map was never measured (--verify measures it)")
    if result.verified is not None:
        v = result.verified
        print(f"  verified now (trial {v['trial_id']}): {label} {value_text(v[m], v[m + '_se'] or 0)}, "
              f"{'within' if v['within_2se'] else 'outside'} 2 standard errors of the prediction")
    print("  choices: " + ", ".join(f"{p}={t}" for p, t in result.choices.items()))
    print(_answer_line(answer, label))
    if args.out_map:
        print(f"  map written to {args.out_map} (build --map {args.out_map})")
    return 0


_ANSWER_FROM = {"solved": "the solved map, as predicted", "verified": "the solved map, as verified now",
                "measured": "the measured trial"}


def _answer_line(answer: dict, label: str) -> str:
    """Which map solve recommends and why: the better of the solved map and the best measured row in the budget."""
    from ..core.units import value_text

    def name(a: dict) -> str:
        who = _ANSWER_FROM[a["from"]] + (f" {a['trial_id']}" if a["from"] == "measured" else "")
        return who + (f" ({a['label']})" if a.get("label") else "") + f", {a['bpw']:.4f} bpw"

    head = f"answer: {name(answer)}: {label} {value_text(answer['value'], answer['se'])}"
    versus = answer["versus"]
    if versus is None:
        return head + " (no other measured row fits the budget)" if answer["from"] == "solved" else head
    clear = versus["better_by"] > 2 * versus["better_by_se"]
    return (head + f"; lower than {name(versus)} ({value_text(versus['value'], versus['se'])}) by "
            f"{versus['better_by']:.5f} +/- {versus['better_by_se']:.5f}"
            + ("" if clear else " (less than 2 standard errors: no clear difference)"))


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="cerebellum-demo", help="where the demo writes its files")
    p.add_argument("--trials", type=positive, default=16)
    p.add_argument("--study", help="study name (default: demo-<timestamp>)")
    p.add_argument("--num-cpus", type=positive, default=None, help="CPUs for the local Ray (default: all)")
    p.add_argument("--seed", type=non_negative, default=0)


def cmd_demo(args) -> int:
    """The whole service on the embedded tiny MoE: local Ray on CPU, llama.cpp presets as reference points, an
    Optuna search, then the Pareto front, its plot and the store's path."""
    from ..study.run import SearchOptions
    from ..study.strategies import run_search
    from ..formats.tiny import make_tiny, make_tiny_imatrix

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = make_tiny("gemma4", work / "tiny-gemma4-f16.gguf", seed=args.seed)
    imatrix = make_tiny_imatrix(source, work / "tiny-gemma4.imatrix", fmt="gguf", seed=args.seed)
    space = _bundled_space("tiny-gemma4.yaml")
    study = args.study or time.strftime("demo-%Y%m%d-%H%M%S")
    store_dir = work / "store"
    print(f"tiny model {source} (made in a second), imatrix {imatrix}\nsearch space {space}\nstudy {study}, "
          f"store {store_dir}\n")
    common = dict(space_file=str(space), source=str(source), study=study, store_dir=str(store_dir),
                  imatrix=str(imatrix), num_cpus=args.num_cpus, cache_dir=str(work / "cache"), seed=args.seed)
    print("1/2 scoring llama.cpp's presets as reference points ...", flush=True)
    run_search(SearchOptions(strategy="presets", presets=("Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K"), **common))
    print(f"2/2 Optuna search, {args.trials} trials (NSGA-II, 2 at a time) ...", flush=True)
    run_search(SearchOptions(strategy="optuna", trials=args.trials, **common))
    plot = work / f"{study}-pareto.png"
    from .cmd_results import fronts_report, print_fronts

    print_fronts(fronts_report(str(store_dir), [study], plots=[str(plot), str(plot.with_suffix(".html"))]))
    print(f"\nstore: {store_dir}\nnext: cerebellum-ray pareto --store {store_dir} --json")
    return 0


def _search_options(args):
    from ..study.run import SearchOptions

    return SearchOptions(
        space_file=args.space, source=args.source, study=args.study, store_dir=args.store, strategy=args.strategy,
        reference=args.reference, imatrix=args.imatrix, trials=args.trials, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, scheduler=args.scheduler,
        max_failures=args.max_failures, resume=args.resume, address=args.address, storage_path=args.storage_path,
        cache_dir=args.cache_dir, seed=args.seed, verbose=not args.json, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, presets=tuple(x for x in (args.presets or "").split(",") if x),
        map_file=args.map, warm_start=tuple(args.warm_start or ()), base=args.base,
    )


def _study_summary(store_dir: str, study: str) -> dict[str, Any]:
    from ..core import store

    rows = store.rows(store_dir, [study])
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    from ..predict.fronts import compute_fronts

    fronts = compute_fronts(rows, ["size", "kld"]) if rows else []
    front = fronts[0].points if fronts else []
    keep = ("trial_id", "strategy", "label", "size_bytes", "bpw", "kld", "kld_se", "ppl", "humaneval")
    return {"study": study, "trials": len(rows), "by_status": by_status,
            "front": [{k: r.get(k) for k in keep} for r in front]}


def _print_study_summary(summary: dict, store_dir: str) -> None:
    print(f"\nstudy {summary['study']}: {summary['trials']} trials "
          f"({', '.join(f'{n} {s}' for s, n in sorted(summary['by_status'].items()))})")
    print(f"Pareto front (size vs mean KLD), {len(summary['front'])} points:")
    print(f"  {'trial':<22} {'strategy':<9} {'bpw':>7} {'size':>12} {'kld':>10} {'+/-':>8} {'ppl':>10}  label")
    from ..core.units import value_text

    for r in summary["front"]:
        print(f"  {r['trial_id']:<22} {r['strategy']:<9} {r['bpw']:>7.3f} {r['size_bytes']:>12} "
              f"{value_text(r['kld']):>10} {r['kld_se'] or 0:>8.5f} {r['ppl']:>10.3f}  {r['label'] or ''}")
    print(f"store: {store_dir}")


_SOLVE_LABELS = {"kld": "KLD", "kld_code": "code KLD"}


def _predicted_others(predicted: dict, metric: str) -> str:
    """The predictions beside the one the map was chosen by: ", code KLD x +/- y, PPL z +/- w"."""
    parts = [f", {label} {predicted[m]:.5f} +/- {predicted[m + '_se']:.5f}" for m, label in _SOLVE_LABELS.items()
             if m != metric and m in predicted]
    if "ppl" in predicted:
        parts.append(f", PPL {predicted['ppl']:.4f} +/- {predicted['ppl_se']:.4f}")
    return "".join(parts)


def _bundled_space(name: str) -> Path:
    """A search space shipped with the package (package data: cerebellum_ray/search_spaces, the repository's
    search_spaces/ folder), so the demo works from an installed wheel in any directory."""
    from importlib import resources

    path = Path(str(resources.files("cerebellum_ray").joinpath("search_spaces", name)))
    if not path.is_file():
        raise CerebellumError(f"search space {name} is not in the installed package ({path}): reinstall cerebellum-ray")
    return path


COMMANDS = (
    Command("search", "search precision maps on Ray Tune (guided, Optuna or automated ablation)", _search_arguments,
            cmd_search, shared=(study_option("study name (resume continues a study of this name)"),
                                store_option("result store directory (Parquet, one file per trial)"),
                                imatrix_option("importance matrix for the builds (checked against the model before Ray "
                                        "starts)"),
                                cache_dir_option("per-node tensor cache directory"), json_option())),
    Command("prior", "the zero-run prior of a space: every choice's importance-weighted relative quantization error "
                     "(no model run; cached)", _prior_arguments, cmd_prior,
            shared=(imatrix_option("importance matrix (default: every input weighs alike)"),
                    cache_dir_option("cache directory (default $CEREBELLUM_CACHE or ~/.cache/cerebellum-ray)"),
                    json_option())),
    Command("solve", "the best map a study's rows predict for a size budget, no new trial (--verify measures it)",
            _solve_arguments, cmd_solve, shared=(store_option(), study_option(), json_option())),
    Command("demo", "a whole search on the embedded tiny MoE: local Ray, CPU, a few minutes", _demo_arguments,
            cmd_demo),
)
