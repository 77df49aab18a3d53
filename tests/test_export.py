"""Export, recipe, card, report and the pareto command on a small real study of the tiny MoE."""

import llama_cpp  # noqa: F401  (before numpy)

import json
import re
from pathlib import Path

import pytest
from gguf import GGUFReader

from cerebellum_ray.native import ggml as _ggml
from cerebellum_ray.core import store
from cerebellum_ray.core.errors import CerebellumError
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
def study(tiny_models, tiny_imatrix, tmp_path_factory):
    """A study searched with an imatrix (a copy in the study's folder): two presets and five Optuna trials."""
    import shutil

    import ray

    d = tmp_path_factory.mktemp("study")
    imatrix = d / "study.imatrix"
    shutil.copyfile(tiny_imatrix["gemma4"]["gguf"], imatrix)
    opts = dict(space_file=SPACE, source=str(tiny_models["gemma4"]), study="ex", store_dir=str(d / "store"),
                verbose=False, cache_dir=str(d / "cache"), num_cpus=2, imatrix=str(imatrix))
    run_search(SearchOptions(strategy="presets", presets=("Q3_K_M", "Q4_K_M"), **opts))
    run_search(SearchOptions(strategy="optuna", trials=5, scheduler="none", **opts))
    ray.shutdown()
    return SearchOptions(**opts), d


def test_export_reproduces_the_stored_metrics(study, tiny_models, tmp_path):
    opts, _ = study
    out = tmp_path / "final.gguf"
    result = export(opts.store_dir, str(tiny_models["gemma4"]), str(out), pick="knee")  # the study's imatrix too
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


# ---- the file you take home is the file that was measured --------------------------------------------------------


def _tensors(path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in GGUFReader(path).tensors}


def _provenance(path) -> dict[str, object]:
    from cerebellum_ray.formats.catalog import load_catalog

    return {k: v for k, v in load_catalog(path).kv.items() if k.startswith("cerebellum.")}


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_export_is_the_build_the_trial_scored(study, tmp_path):
    """A front member exported with neither --source nor --imatrix (the study recorded both): every tensor is byte
    for byte the build its trial scored (made again by the trial's own code, which scores it to the stored KLD),
    and the provenance keys name the same source, imatrix and map."""
    from dataclasses import replace

    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.predict.fronts import compute_fronts
    from cerebellum_ray.study.trial import evaluate_map

    opts, _ = study
    rows = [r for r in store.rows(opts.store_dir, ["ex"]) if r["strategy"] == "optuna" and r["status"] == "complete"]
    row = compute_fronts(rows, ["size", "kld"])[0].points[0]
    assert row["imatrix_digest"] not in (None, "none") and row["source_digest"]
    ctx = replace(prepare(opts, tmp_path / "work"), keep_files=True)
    pmap = ctx.space.map_for(load_catalog(ctx.source), json.loads(row["params"]), has_imatrix=True)
    assert pmap.digest == row["map_hash"]
    assert evaluate_map(ctx, pmap, lambda _: None)["kld"] == pytest.approx(row["kld"], rel=1e-9)
    scored = next((tmp_path / "work").glob(f"ex-{pmap.digest[:16]}-*.gguf"))
    out = tmp_path / "release" / "final.gguf"
    out.parent.mkdir()
    result = export(opts.store_dir, None, str(out), trial=row["trial_id"])
    assert _tensors(out) == _tensors(scored)
    assert _provenance(out) == _provenance(scored)
    assert _provenance(out)["cerebellum.imatrix_digest"] == row["imatrix_digest"]
    assert out.stat().st_size == row["size_bytes"]
    assert result["inputs"]["imatrix"] == str(Path(opts.imatrix).resolve())


def test_export_takes_the_studys_inputs_and_refuses_others(study, tiny_models, tiny_imatrix, tmp_path, capsys):
    """Another imatrix or source is refused with one line naming both digests and nothing written; a file with
    the same digest (the imatrix in the other format, a copy of the source) is accepted; a recorded imatrix that
    is gone is refused naming its digest."""
    import shutil

    from cerebellum_ray.formats.imatrix import load_imatrix
    from cerebellum_ray.formats.tiny import make_tiny, make_tiny_imatrix
    from cerebellum_ray.quant.build import source_digest
    from cerebellum_ray.results.inputs import InputsError

    opts, _ = study
    out = tmp_path / "final.gguf"
    theirs = load_imatrix(opts.imatrix).digest
    other = make_tiny_imatrix(tiny_models["gemma4"], tmp_path / "other.imatrix", seed=1)
    with pytest.raises(InputsError) as err:
        export(opts.store_dir, None, str(out), pick="knee", imatrix_path=str(other))
    assert load_imatrix(other).digest in str(err.value) and theirs in str(err.value)
    assert not out.exists()
    assert main(["export", "--store", opts.store_dir, "--pick", "knee", "--out", str(out), "--imatrix",
                 str(other)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()

    export(opts.store_dir, None, str(out), pick="knee", imatrix_path=tiny_imatrix["gemma4"]["dat"])  # same vectors
    copy = shutil.copyfile(tiny_models["gemma4"], tmp_path / "copy.gguf")
    export(opts.store_dir, str(copy), str(tmp_path / "from-copy.gguf"), pick="knee")
    assert _tensors(tmp_path / "from-copy.gguf") == _tensors(out)

    another = make_tiny("gemma4", tmp_path / "seed1.gguf", seed=1)
    with pytest.raises(InputsError) as err:
        export(opts.store_dir, str(another), str(tmp_path / "x.gguf"), pick="knee")
    assert source_digest(another) in str(err.value) and source_digest(tiny_models["gemma4"]) in str(err.value)

    moved = Path(opts.imatrix).rename(tmp_path / "moved.imatrix")
    try:
        with pytest.raises(InputsError, match=f"digest {theirs}.*gone"):
            export(opts.store_dir, None, str(tmp_path / "y.gguf"), pick="knee")
        export(opts.store_dir, None, str(tmp_path / "y.gguf"), pick="knee", imatrix_path=str(moved))
    finally:
        moved.rename(opts.imatrix)


def _study_copy(opts, tmp_path) -> str:
    """The study's store (rows and record) copied, for tests that plant rows."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(opts.store_dir, copy, ignore=shutil.ignore_patterns("_tune", "_optuna"))
    return str(copy)


def _plant_mixed_row(store_dir: str, source) -> dict:
    """A fixed-map row of the study: Q3_K_M with attn_q at Q5_K and ffn_down at Q5_0 (llama-quantize can set it)."""
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import MapSpec, Rule, resolve

    pmap = resolve(load_catalog(source), MapSpec(base="Q3_K_M", rules=(Rule("attn_q", "Q5_K"),
                                                                        Rule("ffn_down", "Q5_0"))), has_imatrix=True)
    template = next(r for r in store.rows(store_dir, ["ex"]) if r["label"] == "Q3_K_M")
    row = {**template, "trial_id": "mixed", "label": "mixed", "strategy": "fixed", "map": dict(pmap.types),
           "map_hash": pmap.digest}
    store.append(store_dir, row)
    return row


def _llama_quantize_as_recipe(source, recipe: Path, out: Path, imatrix_path=None) -> None:
    """What the recipe says llama-quantize does (run in the imatrix's folder), through llama_model_quantize with
    the key/values llama-quantize passes for its --imatrix."""
    from cerebellum_ray.formats.imatrix import load_imatrix

    text = recipe.read_text()
    rules = parse_tensor_type_lines("\n".join(x for x in text.splitlines() if not x.startswith("#")))
    ftype = re.search(r"SOURCE\.gguf OUT\.gguf (\S+)", text).group(1)
    im = load_imatrix(imatrix_path) if imatrix_path else None
    kv = None
    if im is not None:
        kv = [("quantize.imatrix.file", Path(imatrix_path).name), ("quantize.imatrix.dataset", im.datasets[0]),
              ("quantize.imatrix.entries_count", len(im.entries)), ("quantize.imatrix.chunks_count", im.chunk_count)]
    _ggml.llama_quantize(str(source), str(out), file_type(ftype).id, imatrix=dict(im.entries) if im else None,
                         overrides=[(r.pattern, ggml_type(r.type).id) for r in rules], n_threads=2, kv_overrides=kv)


def test_plain_export_is_llama_quantizes_file_as_a_whole(study, tiny_models, tmp_path):
    """--plain writes no cerebellum.* keys, and for maps llama-quantize can express (a preset, and a mixed map
    given by its recipe) the whole file is llama-quantize's output: same sha256, with the study's imatrix."""
    opts, _ = study
    store_dir = _study_copy(opts, tmp_path)
    _plant_mixed_row(store_dir, tiny_models["gemma4"])
    for trial in ("Q4_K_M", "mixed"):
        folder = tmp_path / trial
        folder.mkdir()
        result = export(store_dir, None, str(folder / "plain.gguf"), trial=trial, plain=True)
        assert not _provenance(result["out"])
        assert "quantize.imatrix.file" in dict(load_catalog_kv(result["out"]))
        _llama_quantize_as_recipe(tiny_models["gemma4"], Path(result["recipe"]), folder / "llama.gguf", opts.imatrix)
        assert _sha256(result["out"]) == _sha256(folder / "llama.gguf"), trial
        card = json.loads(Path(result["card"]).read_text())
        assert card["provenance"]["plain"] and card["provenance"]["imatrix_digest"] == result["row"]["imatrix_digest"]
    default = export(store_dir, None, str(tmp_path / "default.gguf"), trial="mixed")
    assert _provenance(default["out"]) and _sha256(default["out"]) != _sha256(tmp_path / "mixed" / "llama.gguf")


def load_catalog_kv(path) -> dict:
    from cerebellum_ray.formats.catalog import load_catalog

    return dict(load_catalog(path).kv)


def test_plain_export_without_an_imatrix_is_llama_quantizes_file(demo_store, tmp_path):
    """A store without study records (older versions): --source is needed, and --plain of a preset map is
    llama_model_quantize's file as a whole."""
    store_dir, source = demo_store
    with pytest.raises(CerebellumError, match="give --source"):
        export(store_dir, None, str(tmp_path / "x.gguf"), trial="t2")
    result = export(store_dir, source, str(tmp_path / "plain.gguf"), trial="t2", plain=True)
    _llama_quantize_as_recipe(source, Path(result["recipe"]), tmp_path / "llama.gguf")
    assert _sha256(result["out"]) == _sha256(tmp_path / "llama.gguf")


def test_model_card_modelfile_and_custom_q(study, tmp_path):
    """README.md is a Hugging Face model card (front matter, the seed card's sections, the map by group with the
    study's evidence, results with protocol and the presets measured with the same evaluation, usage), the
    Modelfile loads the file, and the recipe's ik_llama.cpp --custom-q rules give every settable tensor its type."""
    import yaml

    from cerebellum_ray.results.card import CardOptions, ggml_type_name

    opts, _ = study
    out = tmp_path / "release" / "final.gguf"
    out.parent.mkdir()
    result = export(opts.store_dir, None, str(out), pick="knee",
                    card=CardOptions(base_model="google/gemma-3-270m", quantized_by="tester"))
    text = Path(result["readme"]).read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "google/gemma-3-270m" and front["base_model_relation"] == "quantized"
    assert {"gguf", "imatrix"} <= set(front["tags"]) and front["quantized_by"] == "tester"
    for needle in ("## At a glance", "## How it was made", "## Precision map", "## Measured results", "## Usage",
                   "Protocol: 6 chunks of 128 tokens", "llama-server -m final.gguf", "ollama create", "lms import",
                   "| Q3_K_M |", "| Q4_K_M |", "this file minus preset", "--custom-q"):
        assert needle in text, needle
    counts = [int(m) for m in re.findall(r"^\| `\w+` \| \w+ \| (\d+) \|", text, re.M)]
    assert sum(counts) == len(result["row"]["map"])
    assert (out.parent / "Modelfile").read_text().splitlines()[1] == "FROM ./final.gguf"

    recipe = Path(result["recipe"]).read_text()
    rules = [r.split("=") for r in re.search(r'--custom-q "([^"]+)"', recipe).group(1).split(",")]
    settable = parse_tensor_type_lines("\n".join(x for x in recipe.splitlines() if not x.startswith("#")))
    for rule in settable:
        name = rule.pattern.strip("^$").replace("\\", "")
        first = next(t for pattern, t in rules if re.search(pattern, name))
        assert first == ggml_type_name(result["map"].types[name]), name


def test_export_never_replaces_a_readme_it_did_not_write(study, tmp_path):
    opts, _ = study
    (tmp_path / "README.md").write_text("# my project\n")
    with pytest.raises(CerebellumError, match="not written by cerebellum-ray"):
        export(opts.store_dir, None, str(tmp_path / "final.gguf"), pick="knee")
    assert (tmp_path / "README.md").read_text() == "# my project\n" and not (tmp_path / "final.gguf").exists()
    (tmp_path / "README.md").unlink()
    export(opts.store_dir, None, str(tmp_path / "final.gguf"), pick="knee")
    export(opts.store_dir, None, str(tmp_path / "final.gguf"), pick="knee")  # its own card is replaced


def test_surgery_recasts_with_the_imatrix_the_file_was_built_with(study, tiny_models, tiny_imatrix, tmp_path,
                                                                  capsys):
    """surgery on an exported file takes the file's imatrix (named by its card, checked by the digest in its
    metadata): a router recast to Q4_K equals the build of the map with that router at Q4_K; another imatrix is
    refused naming both digests; without the card, a recast that the imatrix would change is refused."""
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.imatrix import load_imatrix
    from cerebellum_ray.formats.precision_map import PrecisionMap
    from cerebellum_ray.formats.tiny import make_tiny_imatrix
    from cerebellum_ray.quant.build import build

    opts, _ = study
    out = tmp_path / "final.gguf"
    result = export(opts.store_dir, None, str(out), trial="Q4_K_M")
    router = "blk.1.ffn_gate_inp.weight"
    assert result["map"].types[router] == "F32"
    recast = tmp_path / "recast.gguf"
    assert main(["surgery", str(out), "--set", f"{router}=Q4_K", "--out", str(recast), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["imatrix"] == str(Path(opts.imatrix).resolve())
    wanted = PrecisionMap({**result["map"].types, router: "Q4_K"}, base="Q4_K_M")
    build(tiny_models["gemma4"], wanted, tmp_path / "wanted.gguf", imatrix=load_imatrix(opts.imatrix))
    assert _tensors(recast)[router] == _tensors(tmp_path / "wanted.gguf")[router]

    other = make_tiny_imatrix(tiny_models["gemma4"], tmp_path / "other.imatrix", seed=1)
    assert main(["surgery", str(out), "--set", f"{router}=Q4_K", "--out", str(tmp_path / "x.gguf"), "--imatrix",
                 str(other)]) == 2
    err = capsys.readouterr().err
    assert load_imatrix(other).digest in err and load_imatrix(opts.imatrix).digest in err
    Path(result["card"]).unlink()
    assert main(["surgery", str(out), "--set", f"{router}=Q4_K", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "give --imatrix" in capsys.readouterr().err
    assert main(["surgery", str(out), "--set", f"{router}=Q8_0", "--out", str(tmp_path / "q8.gguf")]) == 0
    assert load_catalog(tmp_path / "q8.gguf")[router].type == "Q8_0"
