"""The command line as users script it: exit codes, --json output, errors on stderr, no partial files."""

import json
import subprocess
import sys

import pytest

from cerebellum_ray.cli import main


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "cerebellum_ray.cli", *map(str, args)], capture_output=True,
                          text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_inspect_json_lists_groups_types_and_legal_types(tiny_models):
    rc, out, _ = run("inspect", tiny_models["gemma4"], "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["architecture"] == "gemma4" and data["n_tensors"] == len(data["tensors"])
    groups = {t["group"] for t in data["tensors"]}
    assert {"router", "ffn_gate_up_exps", "ffn_down_exps", "attn_q", "ffn_gate", "norm", "token_embd"} <= groups
    router = next(t for t in data["tensors"] if t["group"] == "router")
    assert router["type"] == "F32" and "Q8_0" in router["legal_types"]
    narrow = [t for t in data["tensors"] if t["group"] != "norm" and "Q4_K" not in t["legal_types"]]
    assert narrow and all(t["shape"][0] % 256 for t in narrow)
    assert data["tensor_bytes"] == sum(t["bytes"] for t in data["tensors"])


def test_inspect_people_output(tiny_models):
    rc, out, _ = run("inspect", tiny_models["mixtral"])
    assert rc == 0 and "bits per weight" in out and "ffn_gate_exps" in out


def test_map_then_build_agree_on_size(tiny_models, tmp_path):
    src = tiny_models["gemma4"]
    args = ["--source", src, "--base", "Q3_K_M", "--set", "blk.2.ffn_gate_inp.weight=Q8_0", "--set", "attn_q=Q5_K"]
    rc, out, err = run("map", *args, "--json", "--tensor-type-file", tmp_path / "types.txt")
    assert rc == 0, err
    planned = json.loads(out)
    assert planned["types"]["blk.2.ffn_gate_inp.weight"] == "Q8_0"
    rc, out, err = run("build", *args, "--out", tmp_path / "o.gguf", "--cache-dir", tmp_path / "c", "--json")
    assert rc == 0, err
    built = json.loads(out)
    assert built["file_size"] == planned["file_size"] == (tmp_path / "o.gguf").stat().st_size
    assert built["provenance"]["map_digest"] == planned["map_digest"]
    # the routers cannot be written as llama-quantize lines; everything else can
    lines = (tmp_path / "types.txt").read_text().split()
    assert r"^blk\.0\.attn_q\.weight$=q5_k" in lines and not any("ffn_gate_inp" in x for x in lines)


@pytest.mark.parametrize("args,needle", [
    (["--set", "blk.99.attn_q.weight=Q4_K"], "unknown tensor"),
    (["--set", "ffn_down=Q4_K"], "Legal types"),
    (["--set", "attn_q=Q4_Z"], "unknown ggml type"),
    (["--base", "Q9_K"], "unknown base preset"),
])
def test_build_refuses_bad_maps_with_exit_2_and_no_file(tiny_models, tmp_path, args, needle):
    out = tmp_path / "o.gguf"
    rc, stdout, err = run("build", "--source", tiny_models["gemma4"], *args, "--out", out, "--no-cache")
    assert rc == 2 and needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_and_garbage_files(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.gguf")]) == 2
    (tmp_path / "junk.gguf").write_bytes(b"\x00" * 100)
    assert main(["inspect", str(tmp_path / "junk.gguf")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "not a GGUF file" in err


def test_make_tiny_cli(tmp_path):
    rc, out, err = run("make-tiny", "--arch", "llama", tmp_path / "t.gguf", "--imatrix", tmp_path / "t.dat", "--json")
    assert rc == 0, err
    assert len(json.loads(out)["files"]) == 2 and (tmp_path / "t.dat").stat().st_size > 0


def test_fallbacks_are_summarised_and_listed_with_v(tiny_models):
    """The tiny gemma4's ffn_down rows (352) take no K-quant: Q4_K_M falls back on every layer. One line per rule
    and reason by default, tensors as layer ranges; one line per tensor with -v."""
    rc, out, _ = run("map", "--source", tiny_models["gemma4"], "--base", "Q4_K_M")
    lines = [ln for ln in out.splitlines() if "fallback:" in ln]
    assert rc == 0 and lines and len(lines) <= 4
    assert any("blk.0-1,3-4.ffn_down.weight" in ln for ln in lines)  # layers 2 and 5 get Q6_K -> Q8_0
    rc, out_v, _ = run("map", "--source", tiny_models["gemma4"], "--base", "Q4_K_M", "-v")
    every = [ln for ln in out_v.splitlines() if "fallback:" in ln]
    assert len(every) > len(lines) and sum("blk.3.ffn_down.weight" in ln for ln in every) == 1


def test_compress_names():
    from cerebellum_ray.formats.catalog import compress_names, layer_ranges

    assert layer_ranges([7, 0, 1, 2, 5, 8]) == "0-2,5,7-8"
    assert compress_names(["blk.0.a.weight", "token_embd.weight", "blk.1.a.weight", "blk.3.a.weight",
                           "blk.2.b.weight"]) == ["blk.0-1,3.a.weight", "token_embd.weight", "blk.2.b.weight"]


@pytest.mark.slow
def test_an_installed_wheel_runs_the_demo_from_any_directory(tmp_path):
    """`pip install` of the built wheel (not the checkout): the bundled spaces are package data, so `demo` works
    from an unrelated directory."""
    import os
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(root)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("cerebellum_ray-*.whl"))
    assert "cerebellum_ray/search_spaces/tiny-gemma4.yaml" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "RAY_USAGE_STATS_ENABLED": "0"}
    where = subprocess.run([sys.executable, "-c", "import cerebellum_ray; print(cerebellum_ray.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
    proc = subprocess.run([sys.executable, "-m", "cerebellum_ray.cli", "demo", "--trials", "2", "--num-cpus", "2",
                           "--workdir", str(elsewhere / "demo")], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(site) in proc.stdout and "points on the front" in proc.stdout
    assert list((elsewhere / "demo" / "store").glob("*.parquet"))
