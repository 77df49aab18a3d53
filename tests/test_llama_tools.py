"""Against llama.cpp's own command-line tools, built from the llama.cpp sources inside the llama-cpp-python sdist
(bench/build_llama_tools.sh; 5-10 minutes the first time). Marked `llama_tools`: not in the default run.

    pytest -m llama_tools
"""

import re
import subprocess
from pathlib import Path

import pytest

from cerebellum_ray.corpus import default_text
from cerebellum_ray.llama_runner import RunnerConfig
from cerebellum_ray.score import EvalSpec, score

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
    repeated."""
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
    from cerebellum_ray.build import build
    from cerebellum_ray.catalog import load_catalog
    from cerebellum_ray.precision_map import MapSpec, resolve
    from cerebellum_ray.score import compute_reference, llama_reference

    base = tiny_models["llama"]
    quant = tmp_path / "q.gguf"
    build(base, resolve(load_catalog(base), MapSpec(base="Q3_K_S")), quant, n_threads=2)
    n_ctx, chunks = 128, 8
    base_file = tmp_path / "base.kld"
    run = [str(tools / "llama-perplexity"), "-c", str(n_ctx), "-b", "2048", "-t", "2"]
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
