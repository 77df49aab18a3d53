"""Regenerate cerebellum_ray/data/stdlib-docs.txt: English prose from CPython's standard-library docstrings.

The docstrings are part of CPython (Python Software Foundation License, permissive, redistributable with its notice),
which makes the corpus license-clean. Doctest examples and lines that are mostly code are dropped.

    python bench/make_corpus.py
"""

import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = [
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect",
    "io", "ipaddress", "itertools", "json", "locale", "logging", "mailbox", "mimetypes", "multiprocessing", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse", "urllib.request", "uuid",
    "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
]


def prose(doc: str) -> str:
    keep = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = para.strip().splitlines()
        if not lines or any(line.lstrip().startswith((">>>", "...", "$ ", "%")) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() or c == " " for c in text)
        if len(text) > 60 and letters / len(text) > 0.85:
            keep.append(text)
    return "\n\n".join(keep)


def main() -> None:
    parts = []
    for name in MODULES:
        mod = importlib.import_module(name)
        docs = [mod.__doc__ or ""]
        for attr in sorted(getattr(mod, "__all__", None) or [a for a in dir(mod) if not a.startswith("_")]):
            obj = getattr(mod, attr, None)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                docs.append(obj.__doc__ or "")
        text = "\n\n".join(p for p in (prose(d) for d in docs) if p)
        if text:
            parts.append(text)
    out = Path(__file__).resolve().parent.parent / "cerebellum_ray" / "data" / "stdlib-docs.txt"
    header = (f"English prose from the docstrings of CPython {sys.version.split()[0]}'s standard library "
              "(Python Software Foundation License). Made by bench/make_corpus.py.\n\n")
    out.write_text(header + "\n\n".join(parts) + "\n")
    print(f"wrote {out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
