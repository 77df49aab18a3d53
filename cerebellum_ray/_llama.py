"""The one place that imports llama-cpp-python. Import it from here, and before numpy: with a CUDA build of
llama.cpp, a process that imported numpy first crashed at start (../shared/notes/gpu.md), so every module that
drives llama.cpp begins with ``from ._llama import llama_cpp``."""

from __future__ import annotations

import llama_cpp

__all__ = ["llama_cpp"]
