"""Built-in evaluation texts, shipped with the package (nothing is downloaded).

* `default_text()`: English prose, the docstrings of CPython's standard library (PSF license), made by
  bench/make_corpus.py. The default text for perplexity and KL divergence.
"""

from __future__ import annotations

from importlib import resources


def _data(name: str) -> str:
    return resources.files("cerebellum_ray").joinpath("data", name).read_text(encoding="utf-8")


def default_text() -> str:
    """The project's license-clean English corpus (CPython standard-library docstrings, PSF license)."""
    return _data("stdlib-docs.txt")


__all__ = ["default_text"]
