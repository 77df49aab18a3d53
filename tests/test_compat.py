"""The flat layout's module paths still work after the move into rooms: every old (module, name) pair imports, a
searcher state pickled by the flat layout loads, and a study begun by it resumes (fixtures recorded before the move:
tests/fixtures/old_layout_names.py, make_resume_fixture.sh)."""

import llama_cpp  # noqa: F401  (before numpy)

import importlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_NAMES = json.loads((FIXTURES / "old_layout_names.json").read_text())["modules"]
PAIRS = [(module, name) for module, names in sorted(OLD_NAMES.items()) for name in names]
# the pickled searcher remembers its source and its Optuna journal by absolute path: the fixture was made here
FIXTURE_ROOT = Path("/tmp/cerebellum-resume-fixture")


def test_the_old_names_were_generated_from_every_old_module():
    assert len(OLD_NAMES) >= 46 and len(PAIRS) > 1000
    assert "run_optuna" in OLD_NAMES["search"] and "TrialContext" in OLD_NAMES["trial"]


@pytest.mark.parametrize("module", sorted(OLD_NAMES))
def test_every_old_name_imports_from_its_old_path(module):
    mod = importlib.import_module(f"cerebellum_ray.{module}")
    missing = [name for name in OLD_NAMES[module] if not hasattr(mod, name)]
    assert missing == []


def test_an_old_path_is_the_new_module_itself():
    """Not a copy: monkeypatching or isinstance checks through either path see one object."""
    import cerebellum_ray.study.trial as new
    import cerebellum_ray.trial as old

    assert old is new
    assert importlib.import_module("cerebellum_ray.search_runtime") is importlib.import_module(
        "cerebellum_ray.study.run")


def _fixture_store(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURES / "resume-before-rooms.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "store"


def test_a_searcher_state_pickled_by_the_flat_layout_loads(tmp_path):
    import ray.cloudpickle as cloudpickle

    from cerebellum_ray.study.trial import TrialContext

    store_dir = _fixture_store(tmp_path)
    (state_file,) = (store_dir / "_tune" / "before").glob("searcher-state-*.pkl")
    with state_file.open("rb") as f:
        state = cloudpickle.load(f)
    assert isinstance(state["ctx"], TrialContext)
    assert type(state["ctx"]).__module__ == "cerebellum_ray.study.trial"
    assert state["_study_name"] == "before" and state["ctx"].space.objectives == ("kld", "size")


@pytest.mark.slow
def test_a_study_begun_by_the_flat_layout_resumes(tmp_path):
    """Its driver was killed after the first of 4 trials; --resume with today's package runs the other 3."""
    from cerebellum_ray.cli import main
    from cerebellum_ray.core import store
    from cerebellum_ray.formats.tiny import make_tiny

    shutil.rmtree(FIXTURE_ROOT, ignore_errors=True)
    FIXTURE_ROOT.mkdir(parents=True)
    try:
        store_dir = _fixture_store(FIXTURE_ROOT)
        assert len(store.rows(store_dir, ["before"])) == 1
        source = make_tiny("gemma4", FIXTURE_ROOT / "tiny-gemma4.gguf", seed=0)
        space = Path(__file__).resolve().parent.parent / "search_spaces" / "tiny-gemma4.yaml"
        code = main(["search", "--space", str(space), "--source", str(source), "--study", "before",
                     "--store", str(store_dir), "--strategy", "optuna", "--trials", "4", "--max-concurrent", "1",
                     "--num-cpus", "2", "--cache-dir", str(tmp_path / "cache"), "--seed", "0", "--resume"])
        rows = store.rows(store_dir, ["before"])
    finally:
        shutil.rmtree(FIXTURE_ROOT, ignore_errors=True)
    assert code == 0
    assert len(rows) == 4 and all(r["status"] == "complete" for r in rows)
    assert len({r["map_hash"] for r in rows}) == 4
