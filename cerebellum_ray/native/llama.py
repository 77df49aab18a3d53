"""The one place that imports llama-cpp-python. Import it from here, and before numpy: with a CUDA build of
llama.cpp, a process that imported numpy first crashed at start (../shared/notes/gpu.md), so every module that
drives llama.cpp begins with ``from ._llama import llama_cpp``."""

from __future__ import annotations

import llama_cpp


def chat_formatter(template: str, bos_token: str, eos_token: str, add_generation_prompt: bool = True):
    """llama-cpp-python's sandboxed Jinja2 renderer of a GGUF chat template (call it with messages=[...])."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token,
                               add_generation_prompt=add_generation_prompt)


__all__ = ["chat_formatter", "llama_cpp"]
