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
