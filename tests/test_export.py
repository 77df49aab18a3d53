"""Export, recipe, card, report and the pareto command on a small real study of the tiny MoE."""

import llama_cpp  # noqa: F401  (before numpy)

import json
import re
from pathlib import Path

import pytest
from gguf import GGUFReader

from cerebellum_ray.native import ggml as _ggml
from cerebellum_ray.core import store
from cerebellum_ray.cli import main
from cerebellum_ray.results.export import export, pick_row
from cerebellum_ray.formats.ggml_types import file_type, ggml_type
from cerebellum_ray.formats.precision_map import parse_tensor_type_lines
from cerebellum_ray.evaluate.score import EvalSpec, score
from cerebellum_ray.study.run import SearchOptions, prepare
from cerebellum_ray.study.strategies import run_search

pytestmark = pytest.mark.slow
SPACE = str(Path("search_spaces/tiny-gemma4.yaml").resolve())


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory):
    import ray

    d = tmp_path_factory.mktemp("study")
    opts = dict(space_file=SPACE, source=str(tiny_models["gemma4"]), study="ex", store_dir=str(d / "store"),
                verbose=False, cache_dir=str(d / "cache"), num_cpus=2)
    run_search(SearchOptions(strategy="presets", presets=("Q3_K_M", "Q4_K_M"), **opts))
    run_search(SearchOptions(strategy="optuna", trials=5, scheduler="none", **opts))
    ray.shutdown()
    return SearchOptions(**opts), d


def test_export_reproduces_the_stored_metrics(study, tiny_models, tmp_path):
    opts, _ = study
    out = tmp_path / "final.gguf"
    result = export(opts.store_dir, str(tiny_models["gemma4"]), str(out), pick="knee")
    row = result["row"]
    ctx = prepare(opts, tmp_path / "work")  # the same evaluation and (cached) reference as the study
    ev = ctx.space.evaluation
    rec = score(out, EvalSpec(ctx.eval_text, n_ctx=ev.ctx, n_chunks=ev.chunks, top_k=ev.top_k), ctx.reference)
    assert rec.kld == pytest.approx(row["kld"], rel=1e-6)
    assert rec.ppl == pytest.approx(row["ppl"], rel=1e-6)
    assert out.stat().st_size == row["size_bytes"] == result["file_size"]
    card = json.loads(Path(result["card"]).read_text())
    assert card["trial"]["trial_id"] == row["trial_id"] and card["metrics"]["kld_se"] == row["kld_se"]
    assert sum(g["count"] for g in card["precision_map_by_group"]) == len(row["map"])


def test_recipe_reproduces_the_map_with_llama_quantize_except_what_it_cannot(study, tiny_models, tmp_path):
    opts, _ = study
    out = tmp_path / "final.gguf"
    result = export(opts.store_dir, str(tiny_models["gemma4"]), str(out), pick="knee")
    text = Path(result["recipe"]).read_text()
    lines = [x for x in text.splitlines() if not x.startswith("#")]
    rules = parse_tensor_type_lines("\n".join(lines))
    oracle = tmp_path / "llama.gguf"
    _ggml.llama_quantize(str(tiny_models["gemma4"]), str(oracle), file_type("Q3_K_M").id,
                         overrides=[(r.pattern, ggml_type(r.type).id) for r in rules], n_threads=2)
    theirs = {t.name: t.tensor_type.name for t in GGUFReader(oracle).tensors}
    ours = result["map"].types
    differ = {n for n in ours if ours[n] != theirs[n]}
    cannot = set(re.findall(r"#   surgery: (\S+):", text))
    assert differ == cannot  # exactly the router changes llama-quantize ignores, and they are listed for surgery


def test_pick_rules(study):
    opts, _ = study
    rows = [r for r in store.rows(opts.store_dir) if r["status"] == "complete"]
    smallest = min(r["size_bytes"] for r in rows)
    chosen = pick_row(opts.store_dir, None, max_size=smallest)
    assert chosen["size_bytes"] == smallest
    assert pick_row(opts.store_dir, None, trial="Q4_K_M")["label"] == "Q4_K_M"
    with pytest.raises(ValueError, match="no trial fits"):
        pick_row(opts.store_dir, None, max_size=10)


def test_pareto_command_json_and_plots(study, tmp_path, capsys):
    opts, _ = study
    png, page = tmp_path / "front.png", tmp_path / "front.html"
    assert main(["pareto", "--store", opts.store_dir, "--plot", str(png), "--plot", str(page), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in data["fronts"]] == ["ex"]
    assert {r["label"] for r in data["references"]} == {"Q3_K_M", "Q4_K_M"}
    front = data["fronts"][0]["points"]
    assert front and all(a["size_bytes"] <= b["size_bytes"] for a, b in zip(front, front[1:]))
    assert png.stat().st_size > 10_000 and "plotly" in page.read_text()[:100_000].lower()


def test_report_page(study, tmp_path):
    opts, _ = study
    out = tmp_path / "report.html"
    assert main(["report", "--store", opts.store_dir, "--study", "ex", "--out", str(out)]) == 0
    page = out.read_text()
    assert "data:image/png;base64," in page and "Front points" in page and "Budget" in page
    assert "attn_q" in page and "trials" in page
