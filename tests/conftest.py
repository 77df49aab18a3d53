"""Shared fixtures: the tiny embedded models (made once per session) and llama.cpp's own quantizer as oracle."""

import llama_cpp  # noqa: F401  (must be imported before numpy: a CUDA build of llama.cpp crashes otherwise)

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_models(tiny_dir):
    """{arch: path} for the three tiny F16 models."""
    from cerebellum_ray.tiny import TINY_ARCHS, make_tiny

    return {arch: make_tiny(arch, tiny_dir / f"{arch}.gguf", seed=0) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def tiny_imatrix(tiny_models, tiny_dir):
    """{arch: {"gguf": path, "dat": path}}: matching importance matrices in both formats."""
    from cerebellum_ray.tiny import make_tiny_imatrix

    return {
        arch: {fmt: make_tiny_imatrix(path, tiny_dir / f"{arch}.{fmt}.imatrix", fmt=fmt, seed=0)
               for fmt in ("gguf", "dat")}
        for arch, path in tiny_models.items()
    }


@pytest.fixture
def cache(tmp_path):
    from cerebellum_ray.tensor_cache import TensorCache

    c = TensorCache(tmp_path / "cache", size_limit=1 << 30)
    yield c
    c.close()
