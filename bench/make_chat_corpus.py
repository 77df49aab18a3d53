"""Regenerate cerebellum_ray/data/chat-stdlib.jsonl: the built-in chat corpus for chat-formatted evaluation.

Conversations about CPython's standard library (Python Software Foundation License): a user asks what a public
function or class does; the assistant answers with the prose of its docstring (doctest examples and code-like lines
dropped, as in bench/make_corpus.py); every third conversation has a follow-up turn asking for the call signature.
Deterministic for a given Python version (the one that made the file is recorded in the first conversation's system
message).

    python bench/make_chat_corpus.py
"""

import importlib
import inspect
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_corpus import MODULES, prose  # noqa: E402

SYSTEM = "You are a helpful assistant who knows Python's standard library well. Answer briefly and precisely."


def conversations():
    n = 0
    for name in MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(getattr(mod, "__all__", None) or [a for a in dir(mod) if not a.startswith("_")]):
            obj = getattr(mod, attr, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not obj.__doc__:
                continue
            answer = prose(obj.__doc__)
            if not 120 <= len(answer) <= 1500:
                continue
            kind = "class" if inspect.isclass(obj) else "function"
            messages = [{"role": "system", "content": SYSTEM + (f" (CPython {sys.version.split()[0]})" if n == 0
                                                                 else "")},
                        {"role": "user", "content": f"What does the {kind} `{name}.{attr}` do?"},
                        {"role": "assistant", "content": answer}]
            if n % 3 == 0:
                try:
                    sig = f"{name}.{attr}{inspect.signature(obj)}"
                except (TypeError, ValueError):
                    sig = None
                if sig:
                    messages += [{"role": "user", "content": "How do I call it?"},
                                 {"role": "assistant", "content": f"Its signature is `{sig}`."}]
            yield {"messages": messages}
            n += 1


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "cerebellum_ray" / "data" / "chat-stdlib.jsonl"
    rows = list(conversations())
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {out}: {len(rows)} conversations, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
