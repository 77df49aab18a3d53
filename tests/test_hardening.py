"""Bad input from a hostile or careless user: nothing lost, nothing forged, every refusal one line (issue 10).

Each test names the red-team finding it pins down; each failed before its fix.
"""

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from cerebellum_ray.formats import gguf_io
from cerebellum_ray.core.atomic import OutputError, atomic_group, atomic_output, remove_stale_partials
from cerebellum_ray.quant.build import build
from cerebellum_ray.formats.catalog import load_catalog
from cerebellum_ray.cli import main
from cerebellum_ray.core.errors import CerebellumError
from cerebellum_ray.formats.gguf_io import GGUFError
from cerebellum_ray.formats.imatrix import Imatrix, ImatrixError, load_imatrix, save_imatrix
from cerebellum_ray.formats.precision_map import MapError, MapSpec, load_spec, resolve, rules_from_pairs
from cerebellum_ray.formats.space import SpaceError, load_space, space_from_data
from cerebellum_ray.quant.tensor_cache import CacheWarning, TensorCache

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def cli(*args):
    """The installed command in a child process: exit status, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "cerebellum_ray.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(err: str) -> bool:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return len(lines) == 1 and "Traceback" not in err and lines[0].startswith("cerebellum-ray ")


def _pmap(model, base="Q4_K_M"):
    return resolve(load_catalog(model), MapSpec(base=base))


# ---- 1. data loss: an output is never an input ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_build_refuses_to_overwrite_its_source(tiny_models, tmp_path, how):
    src = tmp_path / "model.gguf"
    shutil.copyfile(tiny_models["llama"], src)
    out = {"same path": src, "symlink": tmp_path / "link.gguf", "hard link": tmp_path / "hard.gguf"}[how]
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hard link":
        os.link(src, out)
    before = src.read_bytes()
    rc, _, err = cli("build", "--source", src, "--base", "Q4_K_M", "--out", out, "--no-cache")
    assert rc == 2 and one_line_error(err) and "source model" in err
    assert src.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_build_refuses_to_overwrite_its_imatrix_and_map(tiny_models, tiny_imatrix, tmp_path):
    imatrix = tmp_path / "m.imatrix"
    shutil.copyfile(tiny_imatrix["llama"]["gguf"], imatrix)
    before = imatrix.read_bytes()
    rc, _, err = cli("build", "--source", tiny_models["llama"], "--base", "Q4_K_M", "--imatrix", imatrix, "--out",
                     imatrix, "--no-cache")
    assert rc == 2 and "it is the imatrix" in err and imatrix.read_bytes() == before
    map_file = tmp_path / "m.yaml"
    map_file.write_text("base: Q4_K_M\n")
    rc, _, err = cli("map", "--source", tiny_models["llama"], "--map", map_file, "--tensor-type-file", map_file)
    assert rc == 2 and "it is the map file" in err and map_file.read_text() == "base: Q4_K_M\n"


def test_export_refuses_to_overwrite_its_source(demo_store, tmp_path):
    store, source = demo_store
    before = Path(source).read_bytes()
    rc, _, err = cli("export", "--store", store, "--pick", "knee", "--source", source, "--out", source)
    assert rc == 2 and one_line_error(err) and "source model" in err
    assert Path(source).read_bytes() == before


# ---- 2. no segfault on a context llama.cpp cannot make -------------------------------------------------------------


@pytest.mark.parametrize("ctx", ["0", "-4", "7", "100000000"])
def test_score_with_an_impossible_context_is_one_line(tiny_models, ctx):
    rc, _, err = cli("score", "--model", tiny_models["llama"], "--ctx", ctx)
    assert rc == 2 and one_line_error(err) and ("--ctx" in err or "context" in err)


def test_a_failed_context_frees_the_model_once(tiny_models):
    """llama.cpp returning no context used to free the model, then free it again in close(): SIGSEGV."""
    code = (
        "from cerebellum_ray.native.llama import llama_cpp\n"
        "import gc\n"
        "from cerebellum_ray import llama_runner as lr\n"
        "llama_cpp.llama_init_from_model = lambda *a: None\n"
        "try:\n"
        f"    lr.LlamaRunner({str(tiny_models['llama'])!r}, lr.RunnerConfig(n_ctx=64))\n"
        "except lr.LlamaError as exc:\n"
        "    print('refused:', exc)\n"
        "gc.collect()\n"
        "print('alive')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "could not create a context" in proc.stdout and "alive" in proc.stdout


def test_space_with_context_0_is_refused(tiny_models):
    cat = load_catalog(tiny_models["gemma4"])
    data = {"dimensions": [{"name": "q", "select": {"group": "attn_q"}, "types": ["Q4_K"]}], "evaluation": {"ctx": 0}}
    with pytest.raises(SpaceError, match=r"evaluation\.ctx: 0 is less than the minimum of 4"):
        space_from_data(data, cat)


# ---- 3. YAML alias bombs -------------------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))


def test_yaml_alias_bomb_map_is_refused_fast(tiny_models, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1500
    t0 = time.monotonic()
    with pytest.raises(MapError, match="aliases"):
        load_spec(path)
    assert time.monotonic() - t0 < 5


def test_yaml_alias_bomb_space_is_refused_fast(tiny_models, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    t0 = time.monotonic()
    with pytest.raises(SpaceError, match="aliases"):
        load_space(path, load_catalog(tiny_models["gemma4"]))
    assert time.monotonic() - t0 < 5


def test_huge_and_deep_documents_are_refused(tiny_models, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("x" * (5 << 20))
    with pytest.raises(MapError, match="too large"):
        load_spec(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(MapError, match="nesting|nested"):
        load_spec(deep)


# ---- 4. a HumanEval pass cannot be forged ----------------------------------------------------------------------------

FORGERIES = {
    "marker from its own file": (
        "    import os, re\n"
        "    text = open(__file__).read() if os.path.exists(__file__) else open('program.py').read()\n"
        "    for fd in range(3, 64):\n"
        "        for token in re.findall(r'[0-9a-f]{32}', text):\n"
        "            try:\n"
        "                os.write(fd, token.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"),
    "marker from the runner's frame": (
        "    import os, sys\n"
        "    try:\n"
        "        frame = sys._getframe(1)\n"
        "        while frame is not None:\n"
        "            for value in list(frame.f_locals.values()):\n"
        "                if isinstance(value, bytes) and len(value) == 32:\n"
        "                    for fd in range(3, 64):\n"
        "                        try:\n"
        "                            os.write(fd, value)\n"
        "                        except OSError:\n"
        "                            pass\n"
        "            frame = frame.f_back\n"
        "    except Exception:\n"
        "        pass\n"
        "    os._exit(0)\n"),
    "marker from a traceback": (
        "    import os, sys\n"
        "    try:\n"
        "        raise RuntimeError\n"
        "    except RuntimeError as exc:\n"
        "        try:\n"
        "            frame = exc.__traceback__.tb_frame\n"
        "            while frame is not None:\n"
        "                for value in list(frame.f_locals.values()):\n"
        "                    if isinstance(value, bytes) and len(value) == 32:\n"
        "                        for fd in range(3, 64):\n"
        "                            try:\n"
        "                                os.write(fd, value)\n"
        "                            except OSError:\n"
        "                                pass\n"
        "                frame = frame.f_back\n"
        "        except Exception:\n"
        "            pass\n"
        "    os._exit(0)\n"),
    "marker from gc": (
        "    import gc, os\n"
        "    try:\n"
        "        for obj in gc.get_objects():\n"
        "            if isinstance(obj, dict):\n"
        "                for value in list(obj.values()):\n"
        "                    if isinstance(value, bytes) and len(value) == 32:\n"
        "                        for fd in range(3, 64):\n"
        "                            try:\n"
        "                                os.write(fd, value)\n"
        "                            except OSError:\n"
        "                                pass\n"
        "    except Exception:\n"
        "        pass\n"
        "    os._exit(0)\n"),
    "marker from /proc/self/mem": (
        "    import os, re\n"
        "    try:\n"
        "        maps = open('/proc/self/maps').read().splitlines()\n"
        "        with open('/proc/self/mem', 'rb') as mem:\n"
        "            for line in maps:\n"
        "                lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "                try:\n"
        "                    mem.seek(lo)\n"
        "                    chunk = mem.read(min(hi - lo, 1 << 22))\n"
        "                except OSError:\n"
        "                    continue\n"
        "                for token in set(re.findall(rb'[0-9a-f]{32}', chunk)):\n"
        "                    for fd in range(3, 64):\n"
        "                        try:\n"
        "                            os.write(fd, token)\n"
        "                        except OSError:\n"
        "                            pass\n"
        "    except Exception:\n"
        "        pass\n"
        "    os._exit(0)\n"),
    "marker from a child reading the parent's memory": (
        "    import os, subprocess, sys\n"
        "    code = ('import os,re\\n'\n"
        "            'pid=os.getppid()\\n'\n"
        "            'maps=open(f\"/proc/{pid}/maps\").read().splitlines()\\n'\n"
        "            'mem=open(f\"/proc/{pid}/mem\",\"rb\")\\n'\n"
        "            'for line in maps:\\n'\n"
        "            ' lo,hi=(int(x,16) for x in line.split()[0].split(\"-\"))\\n'\n"
        "            ' try:\\n'\n"
        "            '  mem.seek(lo); c=mem.read(min(hi-lo,1<<22))\\n'\n"
        "            ' except OSError: continue\\n'\n"
        "            ' [print(t.decode()) for t in set(re.findall(rb\"[0-9a-f]{32}\", c))]\\n')\n"
        "    try:\n"
        "        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout\n"
        "    except Exception:\n"
        "        out = ''\n"
        "    for token in out.split():\n"
        "        for fd in range(3, 64):\n"
        "            try:\n"
        "                os.write(fd, token.encode())\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"),
}


@pytest.mark.parametrize("attack", list(FORGERIES))
def test_a_forged_completion_marker_is_not_a_pass(attack):
    from cerebellum_ray.evaluate.humaneval import check_program, load_problems

    problem = load_problems(limit=1)[0]
    res = check_program(problem, FORGERIES[attack], timeout=20.0)
    assert (res.passed, res.status) == (False, "failed"), res.detail


def test_the_guard_leaves_honest_programs_alone():
    """namedtuple, typing, enum, dataclasses and inspect-free stdlib code still run under the audit hook."""
    from cerebellum_ray.evaluate.humaneval import check_program, load_problems

    problem = load_problems(limit=1)[0]
    completion = ("    import collections, dataclasses, enum, typing, re, math, functools\n"
                  "    P = collections.namedtuple('P', 'x y')\n"
                  "    C = enum.Enum('C', 'A B')\n"
                  "    T = typing.NamedTuple('T', [('a', int)])\n"
                  "    dataclasses.make_dataclass('D', ['a'])\n" + problem.canonical_solution)
    res = check_program(problem, completion, timeout=20.0)
    assert res.passed, res.detail


# ---- 5. trial counts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trials", ["-1", "0", "x"])
def test_search_trials_must_be_positive(trials, tmp_path):
    rc, _, err = cli("search", "--space", SPACES / "tiny-gemma4.yaml", "--source", "m.gguf", "--study", "s",
                     "--store", tmp_path, "--trials", trials)
    assert rc == 2 and "--trials" in err and "Traceback" not in err


def test_space_trials_must_be_positive(tiny_models):
    cat = load_catalog(tiny_models["gemma4"])
    data = {"dimensions": [{"name": "q", "select": {"group": "attn_q"}, "types": ["Q4_K"]}], "search": {"trials": -1}}
    with pytest.raises(SpaceError, match=r"search\.trials: -1 is less than the minimum of 1"):
        space_from_data(data, cat)


# ---- 6. negative importances -----------------------------------------------------------------------------------------


def _negative_imatrix(tiny_imatrix, tmp_path, fmt):
    good = load_imatrix(tiny_imatrix["llama"]["gguf"])
    entries = {k: np.array(v) for k, v in good.entries.items()}
    name = next(n for n in entries if "attn_q" in n)
    entries[name][3] = -0.5
    mem = Imatrix.__new__(Imatrix)  # bypass build()'s check: the file on disk is what a user has
    object.__setattr__(mem, "entries", entries)
    object.__setattr__(mem, "n_mat", good.n_mat)
    object.__setattr__(mem, "datasets", good.datasets)
    object.__setattr__(mem, "chunk_count", good.chunk_count)
    object.__setattr__(mem, "chunk_size", max(good.chunk_size, 1))
    path = tmp_path / f"neg.{fmt}"
    save_imatrix(mem, path, fmt=fmt)
    return path, name


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_negative_importance_is_refused_before_ggml_aborts(tiny_models, tiny_imatrix, tmp_path, fmt):
    path, name = _negative_imatrix(tiny_imatrix, tmp_path, fmt)
    with pytest.raises(ImatrixError, match=rf"{name}.*negative importance -0.5 at index 3"):
        load_imatrix(path)
    out = tmp_path / "o.gguf"
    rc, _, err = cli("build", "--source", tiny_models["llama"], "--set", "attn_q=IQ2_XS", "--imatrix", path,
                     "--out", out, "--no-cache")
    assert rc == 2 and one_line_error(err) and "negative importance" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


# ---- 7. export: three files together or none -------------------------------------------------------------------------


def test_export_is_all_or_nothing(demo_store, tmp_path, monkeypatch):
    from cerebellum_ray.results import export as export_mod

    store, source = demo_store
    out = tmp_path / "final.gguf"
    old = {out: b"old gguf", tmp_path / "final.recipe": b"old recipe", tmp_path / "final.card.json": b"old card"}
    for path, data in old.items():
        path.write_bytes(data)

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk trouble while writing the card")

    monkeypatch.setattr(export_mod, "_card", broken_card)
    with pytest.raises(RuntimeError, match="disk trouble"):
        export_mod.export(store, source, str(out), pick="knee")
    assert {p: p.read_bytes() for p in old} == old  # the previous trio, untouched
    assert sorted(p.name for p in tmp_path.glob("final*")) == sorted(p.name for p in old)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    monkeypatch.undo()
    result = export_mod.export(store, source, str(out), pick="knee")
    assert all(Path(result[k]).read_bytes() != old[Path(result[k])] for k in ("out", "recipe", "card"))


def test_a_group_commit_that_fails_midway_puts_everything_back(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if Path(dst) == b:
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError):
        with atomic_group([a, b]) as (ta, tb):
            ta.write_text("new a")
            tb.write_text("new b")
    monkeypatch.undo()
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# ---- 8. corrupt layouts ----------------------------------------------------------------------------------------------


def _write_gguf(path, slots, kv=(), patch=None):
    kv_entries = [gguf_io.encode_kv("general.architecture", "llama", GGUFValueType.STRING), *kv]
    layout = gguf_io.GGUFLayout.build(kv_entries, slots, 32)
    header = bytearray(layout.header)
    if patch:
        patch(header)
    data = b"".join(b"\x01" * gguf_io._pad(s.n_bytes, 32) for s in slots)
    path.write_bytes(bytes(header) + data)
    return path


def test_overlapping_tensor_data_is_refused(tmp_path):
    slots = [gguf_io.TensorSlot("a.weight", (32, 2), 0, 256), gguf_io.TensorSlot("b.weight", (32, 2), 0, 256)]

    def point_b_into_a(header):
        at = bytes(header).index(b"b.weight") + len(b"b.weight") + 4 + 16 + 4
        header[at:at + 8] = struct.pack("<Q", 64)  # inside a's data

    path = _write_gguf(tmp_path / "overlap.gguf", slots, patch=point_b_into_a)
    with pytest.raises(GGUFError, match="corrupt layout: tensor b.weight has data offset 64, but llama.cpp requires"):
        load_catalog(path)
    rc, _, err = cli("inspect", path)
    assert rc == 2 and one_line_error(err)


def test_nested_kv_arrays_and_empty_tensors_are_refused(tmp_path):
    nested = b"".join([gguf_io._encode_str("deep"), struct.pack("<I", 9)]
                      + [struct.pack("<IQ", 9, 1)] * 5000 + [struct.pack("<IQ", 4, 0)])
    path = _write_gguf(tmp_path / "nested.gguf", [gguf_io.TensorSlot("a.weight", (32, 2), 0, 256)], kv=[nested])
    with pytest.raises(GGUFError, match="arrays of scalars or strings"):
        load_catalog(path)
    path = _write_gguf(tmp_path / "empty.gguf", [gguf_io.TensorSlot("a.weight", (0, 4), 0, 0)])
    with pytest.raises(GGUFError, match=r"shape \[0, 4\]"):
        load_catalog(path)


def test_a_directory_is_not_reported_as_missing(tmp_path):
    rc, _, err = cli("inspect", tmp_path)
    assert rc == 2 and "is a directory" in err


# ---- 9. the cache never serves stale or damaged tensors --------------------------------------------------------------


def test_source_rewritten_in_place_with_mtime_restored_misses_the_cache(tiny_models, tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copyfile(tiny_models["llama"], src)
    cache = TensorCache(tmp_path / "cache", size_limit=1 << 30)
    pmap = _pmap(src)
    first = build(src, pmap, tmp_path / "a.gguf", cache=cache, n_threads=2)
    assert first.count("quantized") > 0
    # another model of the same size and tensor layout, written over the source, its mtime restored (cp -p)
    other = tmp_path / "other.gguf"
    from cerebellum_ray.formats.tiny import make_tiny

    make_tiny("llama", other, seed=7)
    st = os.stat(src)
    with open(src, "r+b") as f:
        f.write(other.read_bytes())
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(src).st_size == st.st_size and os.stat(src).st_mtime_ns == st.st_mtime_ns
    second = build(src, pmap, tmp_path / "b.gguf", cache=cache, n_threads=2)
    assert second.count("cached") == 0
    build(src, pmap, tmp_path / "c.gguf", n_threads=2)  # no cache at all
    assert (tmp_path / "b.gguf").read_bytes() == (tmp_path / "c.gguf").read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_a_damaged_cache_entry_is_dropped_and_rebuilt(tiny_models, tmp_path, damage):
    src = tiny_models["llama"]
    cache = TensorCache(tmp_path / "cache", size_limit=1 << 30)
    pmap = _pmap(src)
    build(src, pmap, tmp_path / "a.gguf", cache=cache, n_threads=2)
    _, _, entry = max(cache.entries(), key=lambda e: e[1])
    with open(entry, "r+b") as f:
        if damage == "truncate":
            f.truncate(entry.stat().st_size - 100)
        else:
            f.seek(entry.stat().st_size - 7)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(CacheWarning, match="damaged"):
        report = build(src, pmap, tmp_path / "b.gguf", cache=cache, n_threads=2)
    assert report.count("quantized") == 1 and cache.dropped == 1
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


# ---- 10. one-line errors, never tracebacks ---------------------------------------------------------------------------


def test_score_on_something_llama_cpp_cannot_load(tmp_path, tiny_models):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 64)
    rc, _, err = cli("score", "--model", fake)
    assert rc == 2 and one_line_error(err)


@pytest.mark.parametrize("change,needle", [
    ({"base": 5}, "base: 5 is not of type 'string', 'null'"),
    ({"like": 5}, "like: 5 is not of type 'string', 'null'"),
    ({"evaluation": [1]}, "evaluation: [1] is not of type 'object', 'null'"),
    ({"search": 5}, "search: 5 is not of type 'object', 'null'"),
    ({"evaluation": {"chunks": "x"}}, "evaluation.chunks: 'x' is not of type 'integer', 'null'"),
    ({"evaluation": {"chunks": 0}}, "evaluation.chunks: 0 is less than the minimum of 1"),
    ({"evaluation": {"top_k": 0}}, "evaluation.top_k: 0 is less than the minimum of 1"),
    ({"evaluation": {"humaneval_limit": -1}}, "evaluation.humaneval_limit: -1 is less than the minimum of 0"),
    ({"constraints": {"max_size": 0}}, "constraints.max_size: 0 is less than or equal to the minimum of 0"),
    ({"constraints": {"max_size": "0GB"}}, "constraints.max_size: '0GB' is not a positive size"),
    ({"fallback": "false"}, "fallback: 'false' is not of type 'boolean'"),
    ({"evaluation": {"trails": 4}}, "evaluation: unknown key 'trails'"),
    ({"search": {"trails": 4}}, "search: unknown key 'trails'; allowed: sampler, seed, trials"),
    ({"dimensions": [{"name": "q", "select": {"group": "attn_q"}, "types": ["Q4_K"], "pre": "layer"}]},
     "dimensions[0]: unknown key 'pre'"),
    ({"dimensions": [{"name": "q", "select": {"regex": "attn_q("}, "types": ["Q4_K"]}]},
     "dimension q: select.regex: 'attn_q(' is not a valid regular expression"),
])
def test_wrong_values_in_spaces_are_one_line_errors(tiny_models, change, needle):
    cat = load_catalog(tiny_models["gemma4"])
    data = {"dimensions": [{"name": "q", "select": {"group": "attn_q"}, "types": ["Q4_K"]}], **change}
    with pytest.raises(SpaceError) as err:
        space_from_data(data, cat, source_file="s.yaml")
    assert needle in str(err.value) and str(err.value).startswith("s.yaml")


@pytest.mark.parametrize("text,needle", [
    ("base: 5\n", "base: 5 is not of type 'string', 'null'"),
    ("like: 5\n", "like: 5 is not of type 'string', 'null'"),
    ("fallback: 'false'\ntypes: {attn_q: Q5_K}\n", "fallback: 'false' is not of type 'boolean'"),
    ("types: [1]\n", "types: [1] is not of type 'object', 'null'"),
    ("attn_q: [Q5_K]\n", "attn_q: ['Q5_K'] is not of type 'string'"),
    ("- a\n", "expected a mapping"),
])
def test_wrong_values_in_maps_are_one_line_errors(tmp_path, text, needle):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MapError, match=None) as err:
        load_spec(path)
    assert needle in str(err.value)


def test_cli_map_errors_are_one_line(tiny_models, tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("base: 5\n")
    rc, _, err = cli("map", "--source", tiny_models["llama"], "--map", path)
    assert rc == 2 and one_line_error(err) and "base: 5" in err


def test_catastrophic_regex_is_refused_not_hung(tiny_models, monkeypatch):
    """`(.*.*)*!` backtracks exponentially in Python's `re` on a 27-character tensor name (it hung); rule patterns
    now run on the `regex` package, which answers at once, and under a time limit that names the pattern."""
    cat = load_catalog(tiny_models["mixtral"])
    t0 = time.monotonic()
    with pytest.raises(MapError, match="matches no"):
        resolve(cat, MapSpec(rules=rules_from_pairs(["(.*.*)*!=Q4_K"])))
    assert time.monotonic() - t0 < 5
    from cerebellum_ray.core import schema

    monkeypatch.setattr(schema, "REGEX_TIMEOUT_S", 1e-6)
    with pytest.raises(CerebellumError, match="catastrophic backtracking"):
        schema.search(schema.compile_pattern(r"(\w+)*!", "test"), "w" * 2_000_000, "test")


# ---- 11. validation gaps ---------------------------------------------------------------------------------------------


def test_set_keeps_the_case_of_regular_expressions(tiny_models):
    cat = load_catalog(tiny_models["llama"])
    assert rules_from_pairs(["Attn_Q=Q5_K"])[0].pattern == "Attn_Q"
    with pytest.raises(MapError, match="matches no"):  # tensor names are lower case: Attn_Q matches nothing
        resolve(cat, MapSpec(rules=rules_from_pairs(["Attn_Q=Q5_K"])))
    ok = resolve(cat, MapSpec(rules=rules_from_pairs(["(?i)Attn_Q=Q5_K"])))
    assert {t for n, t in ok.types.items() if "attn_q" in n} == {"Q5_K"}


def test_search_with_an_imatrix_for_another_model_fails_before_ray(tiny_models, tiny_imatrix, tmp_path):
    rc, _, err = cli("search", "--space", SPACES / "tiny-gemma4.yaml", "--source", tiny_models["gemma4"],
                     "--study", "s", "--store", tmp_path / "store", "--imatrix", tiny_imatrix["mixtral"]["gguf"])
    assert rc == 2 and one_line_error(err) and "--imatrix" in err and "another model" in err
    assert not (tmp_path / "store" / "_tune").exists()


# ---- 12. smaller ones ------------------------------------------------------------------------------------------------


def test_sigterm_during_a_build_leaves_no_partial_file(tmp_path):
    from cerebellum_ray.formats.tiny import make_tiny

    src = make_tiny("mixtral", tmp_path / "m.gguf")
    out = tmp_path / "o.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "cerebellum_ray.cli", "build", "--source", str(src), "--base",
                             "IQ4_XS", "--out", str(out), "--no-cache", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode in (0, 128 + signal.SIGTERM)  # 0 only if the build won the race
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "t.txt"
    code = ("import os, sys\nfrom cerebellum_ray.core.atomic import atomic_output\n"
            f"with atomic_output({str(target)!r}) as f:\n    f.write(b'x')\n    os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code], timeout=60)
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    with atomic_output(target) as f:
        f.write(b"done")
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"] and target.read_bytes() == b"done"
    assert remove_stale_partials(target) == []


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "full.bin"
    with pytest.raises(OSError) as err:
        with atomic_output(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(target) and "while writing" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_inspect_into_a_closed_pipe_is_quiet(tiny_models):
    proc = subprocess.run(f"{sys.executable} -m cerebellum_ray.cli inspect {tiny_models['gemma4']} | head -1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and "Error" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("timeout", ["inf", "nan", "0", "-1", "100000"])
def test_humaneval_check_refuses_impossible_timeouts(tmp_path, timeout):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n")
    rc, _, err = cli("humaneval-check", path, "--timeout", timeout)
    assert rc == 2 and "--timeout" in err


def test_report_and_plots_never_replace_store_files(demo_store, tmp_path):
    store, _ = demo_store
    row = next(Path(store).glob("*.parquet"))
    before = row.read_bytes()
    rc, _, err = cli("report", "--store", store, "--study", "demo", "--out", row)
    assert rc == 2 and "file of the result store" in err and row.read_bytes() == before
    rc, _, err = cli("pareto", "--store", store, "--plot", tmp_path / "missing" / "front.png")
    assert rc == 2 and "does not exist" in err and not (tmp_path / "missing").exists()


def test_every_cli_refusal_is_a_cerebellum_error():
    for name in ("gguf_io.GGUFError", "precision_map.MapError", "space.SpaceError", "build.BuildError",
                 "quantize.QuantizeError", "reference.ReferenceMismatch", "export.ExportError", "surgery.SurgeryError",
                 "score.ScoreError", "tasks.TaskError", "imatrix.ImatrixError", "llama_runner.LlamaError",
                 "atomic.OutputError", "humaneval.CompletionFileError", "units.SizeError"):
        module, cls = name.rsplit(".", 1)
        mod = __import__(f"cerebellum_ray.{module}", fromlist=[cls])
        assert issubclass(getattr(mod, cls), CerebellumError), name


def test_output_error_names_missing_directories(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        with atomic_output(tmp_path / "no" / "file"):
            pass
    assert main(["inspect", str(tmp_path / "nothing.gguf")]) == 2
