"""Commands on a result store: pareto, export, verify, report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import CerebellumError
from .options import (Command, add_split_option, cache_dir_option, cell, human, imatrix_option, json_option, number,
                      positive, print_json, split_size, store_option, studies_option, study_option)

__all__ = ["COMMANDS", "cmd_export", "cmd_pareto", "cmd_report", "cmd_verify", "fronts_report", "print_fronts"]


def _pareto_arguments(p: argparse.ArgumentParser) -> None:
    from ..core.metrics import NAMES as metrics  # the registry is standard library only: --help stays instant

    p.add_argument("--x", choices=metrics, default="size", help="metric on the x axis (size)")
    p.add_argument("--y", action="append", choices=metrics,
                   help="metric(s) on the y axis (repeatable: two give a 3-objective front; default kld); each "
                        "metric has its own better direction")
    p.add_argument("--colour", choices=metrics, help="colour the markers by this metric (default: bpw when neither "
                                                     "axis is a size)")
    p.add_argument("--max-bpw", type=number(0.0, 64.0, low_open=True), help="only trials at most this many bpw")
    p.add_argument("--max-gb", type=number(0.0, 1e6, low_open=True), help="only trials at most this many GB")
    p.add_argument("--by", choices=["study", "strategy"], default="study", help="one front per study or strategy")
    p.add_argument("--plot", action="append", help="write a plot: FILE.png (matplotlib) or FILE.html (plotly)")
    p.add_argument("--include-references", action="store_true", help="let presets/fixed maps join the fronts")


def cmd_pareto(args) -> int:
    result = fronts_report(args.store, args.study, x=args.x, y=args.y, colour=args.colour, max_bpw=args.max_bpw,
                           max_gb=args.max_gb, by=args.by, plots=args.plot,
                           include_references=args.include_references)
    if args.json:
        print_json(result)
    else:
        print_fronts(result)
    return 0


def fronts_report(store_dir: str, studies: list[str] | None, *, x: str = "size", y: list[str] | None = None,
                  colour: str | None = None, max_bpw: float | None = None, max_gb: float | None = None,
                  by: str = "study", plots: list[str] | None = None, include_references: bool = False) -> dict:
    """The fronts of `studies` (all: None) on x and y, their hypervolumes, comparisons, knees and reference points,
    and the plots written: what `pareto` prints (people) or dumps (--json)."""
    from ..core.atomic import check_destination, refuse_store_files
    from ..core.metrics import SIZE_AXES, columns as metric_columns
    from ..predict.fronts import compare_fronts, compute_fronts, knee_point, rows_for_fronts

    plots = list(plots or [])
    for path in plots:
        if not path.endswith((".png", ".html")):
            raise CerebellumError(f"--plot {path}: name a .png or an .html file")
        check_destination(path)
        refuse_store_files(path, store_dir)
    objectives = [x] + (y or ["kld"])
    if len(set(objectives)) != len(objectives):
        raise CerebellumError(f"--x and --y name the same metric twice: {objectives}")
    search, refs = rows_for_fronts(store_dir, studies)
    search, refs = _within_size(search, max_bpw, max_gb), _within_size(refs, max_bpw, max_gb)
    if colour is None and len(objectives) == 2 and not set(SIZE_AXES) & set(objectives):
        colour = "bpw"  # a front of two qualities: size as colour
    fronts = compute_fronts(search + refs if include_references else search, objectives, group_by=by)
    if plots:
        from ..results.plots import plot_html, plot_png

        for path in plots:
            (plot_html if path.endswith(".html") else plot_png)(fronts, refs, path, objectives, colour=colour)
    comparisons = [{"a": a.study, "b": b.study, **compare_fronts(a, b)}
                   for i, a in enumerate(fronts) for b in fronts[i + 1:]]
    columns = tuple(dict.fromkeys(("trial_id", "strategy", "label", "size_bytes", "bpw", "kld", "kld_se", "ppl",
                                   "ppl_se", "humaneval", *metric_columns(objectives))))
    return {
        "objectives": objectives, "group_by": by, "colour": colour,
        "fronts": [{"name": f.study, "hypervolume": f.hypervolume, "hypervolume_fraction": f.hypervolume_fraction,
                    "reference_point": list(map(float, f.reference_point)), "n_points": len(f.points),
                    "knee": {k: knee_point(f).get(k) for k in columns} if f.points else None,
                    "points": [{k: p.get(k) for k in columns} for p in f.points]} for f in fronts],
        "comparisons": comparisons,
        "references": [{k: r.get(k) for k in columns} for r in refs],
        "plots": plots,
        **_predictions_and_departures(store_dir, search),
    }


def print_fronts(result: dict) -> None:
    """The people output of `pareto`."""
    from ..core.metrics import metric

    objectives = result["objectives"]
    columns = ["bpw", "size_bytes", "kld", "ppl", "humaneval", *(metric(o).column for o in objectives)]
    shown = list(dict.fromkeys(columns))
    for f in result["fronts"]:
        print(f"\n{result['group_by']} {f['name']}: {f['n_points']} points on the front of {' / '.join(objectives)}, "
              f"hypervolume {f['hypervolume']:.6g} ({100 * f['hypervolume_fraction']:.1f}% of the box)")
        print(f"  {'trial':<22} " + " ".join(f"{c:>14}" for c in shown) + "  label")
        for p in f["points"]:
            knee = "  <- knee" if f["knee"] and p["trial_id"] == f["knee"]["trial_id"] else ""
            print(f"  {p['trial_id']:<22} " + " ".join(f"{cell(p.get(c)):>14}" for c in shown)
                  + f"  {p['label'] or ''}{knee}")
    for c in result["comparisons"]:
        print(f"\n{c['a']} vs {c['b']}: hypervolume {c['hypervolume_a']:.6g} vs {c['hypervolume_b']:.6g}; "
              f"{c['a_dominated_by_b']} of {c['n_a']} {c['a']} points dominated by {c['b']}, "
              f"{c['b_dominated_by_a']} of {c['n_b']} {c['b']} points dominated by {c['a']}")
    refs = result["references"]
    if refs:
        print("\nreference points: " + ", ".join(
            f"{r['label']} ({r['bpw']:.3f} bpw, " + ", ".join(f"{o} {cell(r.get(metric(o).column))}"
                                                              for o in objectives if o not in ("size", "bpw")) + ")"
            for r in refs))
    _print_predictions(result["predictions"], result["departures"])
    for path in result["plots"]:
        print(f"plot: {path}")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", help="a trial id (or a label such as a preset name)")
    which.add_argument("--pick", choices=["knee"], help="the knee of the (size, KLD) front")
    which.add_argument("--max-size", help="the lowest-KLD trial no larger than this (e.g. 11.7GB)")
    p.add_argument("--source", help="the full-precision source the study ran on")
    p.add_argument("--out", required=True, help="FINAL.gguf (FINAL.recipe and FINAL.card.json beside it; the three "
                                                "appear together or not at all)")
    p.add_argument("--plain", action="store_true",
                   help="no cerebellum.* keys (provenance goes to the card), laid out as llama-quantize writes: for "
                        "a map llama-quantize can express, its file byte for byte")
    p.add_argument("--base-model", metavar="ORG/NAME",
                   help="the Hugging Face repository the source was converted from (README.md's base_model; "
                        "default: the source's general.* keys, when they name one)")
    p.add_argument("--quantized-by", metavar="NAME", help="README.md's quantized_by (default: cerebellum-ray)")
    add_split_option(p)


def cmd_export(args) -> int:
    from ..results.export import export
    from ..core.units import parse_size

    from ..results.card import CardOptions
    from ..core.units import value_text

    max_size = parse_size(args.max_size, "--max-size") if args.max_size else None
    result = export(args.store, args.source, args.out, studies=args.study, trial=args.trial, pick=args.pick,
                    max_size=max_size, imatrix_path=args.imatrix, cache_dir=args.cache_dir,
                    split_max_bytes=split_size(args), plain=args.plain,
                    card=CardOptions(base_model=args.base_model, quantized_by=args.quantized_by))
    row = result["row"]
    summary = {"out": result["out"], "parts": result["parts"], "recipe": result["recipe"], "card": result["card"],
               "file_size": result["file_size"], "trial_id": row["trial_id"], "study": row["study"],
               "kld": row["kld"], "kld_se": row["kld_se"], "ppl": row["ppl"], "bpw": row["bpw"],
               "readme": result["readme"], "modelfile": result["modelfile"], "plain": result["plain"],
               **result["inputs"]}
    if args.json:
        print_json(summary)
    else:
        inputs = result["inputs"]
        imatrix = f"imatrix {inputs['imatrix']}" if inputs["imatrix"] else "no imatrix"
        print(f"exported trial {row['trial_id']} of study {row['study']} ({row['bpw']:.3f} bpw, kld "
              f"{value_text(row['kld'], row['kld_se'])}, ppl {value_text(row['ppl'], row['ppl_se'], 3)}), built "
              f"from {inputs['source']} with {imatrix}, as the trial was:\n  {', '.join(result['parts'])} "
              f"({human(result['file_size'])}{', plain: no cerebellum.* keys' if result['plain'] else ''})\n"
              f"  {result['recipe']}\n  {result['card']}\n  {result['readme']} (Hugging Face model card)\n"
              f"  {result['modelfile']} (ollama create NAME -f {result['modelfile']})")
    return 0


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--front", action="store_true", help="the members of the study's front (the default)")
    p.add_argument("--front-on", default="size,kld",
                   help="stored metrics the front is taken on, e.g. size,kld,kld_code (default size,kld)")
    p.add_argument("--trial", action="append", help="a trial id or label instead of the front (repeatable)")
    p.add_argument("--source", help="the source the study ran on (each map is built from it)")
    p.add_argument("--metrics", default="humaneval", help="comma-separated: humaneval,mc (humaneval)")
    p.add_argument("--limit", type=positive, help="HumanEval problems (a deterministic spread; default all 164)")
    p.add_argument("--reference", help="the model compared with on the same problems (default: the source)")
    p.add_argument("--mc", action="append", default=[], help="multiple-choice JSONL file (repeatable)")
    p.add_argument("--max-new-tokens", type=positive, default=384, help="HumanEval: tokens per completion (384)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default: all if visible)")


def cmd_verify(args) -> int:
    from ..native.llama import llama_cpp  # noqa: F401  (before numpy)
    from ..results.verify import VerifyOptions, verify

    opts = VerifyOptions(
        store_dir=args.store, study=args.study, source=args.source, front=not args.trial,
        front_on=tuple(m.strip() for m in args.front_on.split(",") if m.strip()),
        trials=tuple(args.trial or ()), metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        limit=args.limit, reference=args.reference, imatrix=args.imatrix, mc=tuple(args.mc),
        cache_dir=args.cache_dir, n_gpu_layers=args.n_gpu_layers, max_new_tokens=args.max_new_tokens)

    def progress(row):
        if not args.json:
            print(f"  verified {row['trial_id']} ({row['bpw']:.3f} bpw): " + _verified_line(row), flush=True)

    rows = verify(opts, progress)
    keep = ("trial_id", "label", "bpw", "size_bytes", "kld", "ppl", "humaneval", "humaneval_se", "humaneval_n",
            "humaneval_delta", "humaneval_delta_se", "humaneval_mcnemar_p", "humaneval_loops", "mc_acc", "mc_acc_se")
    if args.json:
        print_json({"study": args.study, "reference": args.reference or _verified_source(rows, args),
                     "rows": [{k: r.get(k) for k in keep} for r in rows]})
        return 0
    against = args.reference or _verified_source(rows, args)
    print(f"\nstudy {args.study}: {len(rows)} trials verified against {against}; values "
          f"stored with their rows in {args.store}")
    return 0


def _verified_source(rows: list[dict], args) -> str | None:
    """The source the members were built from (and compared with): --source, else the study's."""
    if args.source:
        return args.source
    from ..results.inputs import study_record

    return (study_record(args.store, args.study) or {}).get("source")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the HTML file (never a file of the store)")


def cmd_report(args) -> int:
    from ..results.report import write_report

    path = write_report(args.store, args.study, args.out)
    print(json.dumps({"report": str(path)}) if args.json else f"wrote {path}")
    return 0


def _predictions_and_departures(store_dir: str, rows: list[dict]) -> dict[str, Any]:
    """Predicted vs measured KLD of the rows that carry a prediction (guided, solve --verify), and the pairs of
    choices whose joint effect departs from additivity by more than 3 standard errors, per guided study."""
    from ..study.guided import study_departures
    from ..predict.fronts import prediction_check

    predictions = prediction_check(rows)
    departures: dict[str, Any] = {}
    if predictions is not None:
        for name in sorted({r["study"] for r in rows if r.get("predicted_kld") is not None}):
            try:
                departures[name] = study_departures(store_dir, name)
            except CerebellumError as exc:  # e.g. a study stored before studies were recorded
                departures[name] = f"not computed: {exc}"
    return {"predictions": predictions, "departures": departures}


def _print_predictions(predictions: dict | None, departures: dict) -> None:
    if predictions is None:
        return
    rho = predictions["spearman"]
    print(f"\npredicted vs measured KLD ({predictions['n']} rows with a prediction made before they ran): Spearman "
          f"{'-' if rho is None else f'{rho:.3f}'}, {100 * predictions['within_2se']:.0f}% within 2 standard errors, "
          f"median relative error {100 * predictions['median_relative_error']:.1f}%")
    for phase, q in predictions["by_phase"].items():
        r = q["spearman"]
        print(f"  {phase}: {q['n']} rows, Spearman {'-' if r is None else f'{r:.3f}'}, "
              f"{100 * q['within_2se']:.0f}% within 2 SE")
    for study, found in departures.items():
        if isinstance(found, str):
            print(f"  {study}: interactions {found}")
        elif not found:
            print(f"  {study}: no pair of choices departs from additivity by more than 3 standard errors")
        else:
            print(f"  {study}: pairs whose joint effect departs from the sum of their effects (> 3 SE):")
            for d in found[:10]:
                print(f"    {d['a']}={d['type_a']} with {d['b']}={d['type_b']}: {d['departure']:+.5f} KLD "
                      f"({d['z']:+.1f} SE)")


def _within_size(rows: list[dict], max_bpw: float | None, max_gb: float | None) -> list[dict]:
    """Rows within --max-bpw / --max-gb (a front of qualities at a size budget)."""
    out = rows
    if max_bpw is not None:
        out = [r for r in out if r.get("bpw") is not None and r["bpw"] <= max_bpw]
    if max_gb is not None:
        out = [r for r in out if r.get("size_bytes") is not None and r["size_bytes"] <= max_gb * 1e9]
    return out


def _verified_line(r: dict) -> str:
    parts = []
    if r.get("humaneval") is not None:
        parts.append(f"HumanEval pass@1 {100 * r['humaneval']:.1f}% of {r['humaneval_n']}, vs reference "
                     f"{100 * r['humaneval_delta']:+.1f} +/- {100 * r['humaneval_delta_se']:.1f} points "
                     f"(McNemar p {r['humaneval_mcnemar_p']:.3g}), loops {100 * r['humaneval_loops']:.0f}%")
    if r.get("mc_acc") is not None:
        parts.append(f"MC {100 * r['mc_acc']:.1f}% +/- {100 * r['mc_acc_se']:.1f}%")
    return "; ".join(parts)


COMMANDS = (
    Command("pareto", "Pareto fronts of studies in a store, hypervolume, comparisons, plots", _pareto_arguments,
            cmd_pareto, shared=(store_option(), studies_option("studies to include (repeatable; default: all)"),
                                json_option())),
    Command("export", "build the chosen trial's map from the source, with a recipe and a card", _export_arguments,
            cmd_export, description=(
                "Build the chosen trial's map from the source and imatrix the study recorded (the file its trial "
                "scored, tensor for tensor), with FINAL.recipe, FINAL.card.json, README.md (a Hugging Face model "
                "card) and an ollama Modelfile beside it, all written together. --source and --imatrix default to "
                "the study's; another file must have the same digest (both digests are named otherwise)."),
            shared=(store_option(), studies_option("studies to choose from (default: all)"),
                                imatrix_option("the imatrix the study used"), cache_dir_option("tensor cache to reuse"),
                                json_option())),
    Command("verify", "score a study's front (or named trials) with HumanEval / multiple choice, paired against "
                      "the reference model; values stored with the rows", _verify_arguments, cmd_verify,
            description=("Build each member's map from the source and imatrix the study recorded (--source and "
                         "--imatrix default to them; another file must have the same digest), score it with "
                         "HumanEval / multiple choice and store the values with its row."),
            shared=(store_option(), study_option(), imatrix_option("the imatrix the study used"),
                    cache_dir_option("tensor cache to reuse"), json_option())),
    Command("report", "one HTML page: front, maps, ablation sensitivities, budget", _report_arguments, cmd_report,
            shared=(store_option(), study_option(), json_option())),
)
