"""The study run's parts that need no Ray: the study record (and records written by older versions), the strategy
registry's refusals, trial resources and concurrency, a derived run sharing its preparation."""

import llama_cpp  # noqa: F401  (before numpy)

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cerebellum_ray.formats.space import SpaceError
from cerebellum_ray.study.run import (SearchOptions, StudyRecord, StudyRecordError, StudyRun, read_study,
                                      study_record_path)
from cerebellum_ray.study.strategies import STRATEGIES, StrategyError, run_search

SPACE = str(Path("search_spaces/tiny-gemma4.yaml").resolve())


def _opts(tmp_path, **kw):
    return SearchOptions(**{"space_file": SPACE, "source": str(tmp_path / "model.gguf"), "study": "s",
                            "store_dir": str(tmp_path / "store"), **kw})


def test_a_record_round_trips_and_names_absolute_paths(tmp_path):
    opts = _opts(tmp_path, imatrix="rel.imatrix", base="Q4_K_M", cache_dir="c", strategy="guided")
    path = StudyRecord.of(opts, "e" * 64).save(opts.store_dir)
    assert path == study_record_path(opts.store_dir, "s")
    record = StudyRecord.load(opts.store_dir, "s")
    assert record == StudyRecord("s", SPACE, str(tmp_path / "model.gguf"), str(Path("rel.imatrix").resolve()), None,
                                 "Q4_K_M", "e" * 64, "c", "guided")
    assert json.loads(path.read_text()) == record.as_dict() == read_study(opts.store_dir, "s")
    again = record.options(opts.store_dir, strategy="solve", verbose=False)
    assert (again.space_file, again.imatrix, again.base, again.strategy) == (SPACE, record.imatrix, "Q4_K_M", "solve")


def test_records_written_by_older_versions_load(tmp_path):
    """The first records had no reference, cache_dir or strategy; a later version may add keys this one ignores."""
    path = study_record_path(tmp_path, "old")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"study": "old", "space_file": "/s.yaml", "source": "/m.gguf", "imatrix": None,
                                "base": None, "eval_hash": "abc"}))
    record = StudyRecord.load(tmp_path, "old")
    assert (record.source, record.eval_hash, record.reference, record.cache_dir, record.strategy) == (
        "/m.gguf", "abc", None, None, None)
    path.write_text(json.dumps({**record.as_dict(), "written_by": "a later version"}))
    assert StudyRecord.load(tmp_path, "old") == record


def test_a_missing_or_broken_record_is_refused_naming_the_studies_there(tmp_path):
    StudyRecord("kept", "/s.yaml", "/m.gguf").save(tmp_path)
    with pytest.raises(StudyRecordError, match=r"no record of study 'gone'.*studies recorded here: kept"):
        StudyRecord.load(tmp_path, "gone")
    broken = study_record_path(tmp_path, "broken")
    broken.write_text("{not json")
    with pytest.raises(SpaceError, match="not a readable study record"):
        StudyRecord.load(tmp_path, "broken")
    broken.write_text(json.dumps({"study": "broken", "space_file": "/s.yaml"}))
    with pytest.raises(StudyRecordError, match="has no 'source'"):
        StudyRecord.load(tmp_path, "broken")


def test_the_registry_is_data_the_command_line_can_read_for_help():
    """Listing the strategies imports neither Ray, Optuna, numpy nor llama.cpp; every entry names a function."""
    code = ("import sys, json; import cerebellum_ray.study.strategies as s; "
            "print(json.dumps([list(s.STRATEGIES), sorted(sys.modules)]))")
    names, loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                              text=True).stdout)
    assert names == list(STRATEGIES)
    assert not set(loaded) & {"numpy", "ray", "optuna", "llama_cpp", "pyarrow"}
    for s in STRATEGIES.values():
        assert callable(s.run) and (s.check is None or callable(s.check)) and s.summary


def test_the_registry_refuses_before_preparing_anything(tmp_path):
    assert list(STRATEGIES) == ["guided", "optuna", "ablation", "presets", "fixed"]
    with pytest.raises(StrategyError, match="unknown strategy 'nsga2'; strategies: guided, optuna"):
        run_search(_opts(tmp_path, strategy="nsga2"))
    with pytest.raises(ValueError, match="--strategy fixed needs --map FILE"):
        run_search(_opts(tmp_path, strategy="fixed"))
    assert not (tmp_path / "store").exists()  # refused before the study was prepared or recorded


def test_concurrency_follows_the_cluster_and_the_trial_resources(tmp_path, capsys):
    def run(cluster, **kw):
        r = StudyRun(_opts(tmp_path, **kw), ctx=None)
        r._cluster = cluster  # as init_ray would report it
        return r

    assert run({"CPU": 8.0}, cpus_per_trial=2.0).concurrency == 4
    assert run({"CPU": 8.0, "GPU": 1.0}, cpus_per_trial=1.0, gpus_per_trial=0.5).concurrency == 2
    assert run({"CPU": 8.0}, max_concurrent=3).concurrency == 3
    no_gpu = run({"CPU": 2.0}, gpus_per_trial=0.25)
    assert no_gpu.resources == {"cpu": 1.0, "gpu": 0.0} and "no GPU" in capsys.readouterr().err
    derived = no_gpu.derive(trials=5, resume=True)
    assert derived.opts.trials == 5 and derived.resources == no_gpu.resources and derived.cluster is no_gpu.cluster
    assert no_gpu.opts.trials is None
    assert run({}, storage_path="s3://bucket/x/").experiment_path() == "s3://bucket/x/s"


def test_a_trial_stored_before_the_driver_died_reports_every_objective(tmp_path):
    """A restarted trial that was already stored reports its row again: under every metric's name (size in GB,
    speed, mc), as the searcher and the stoppers read a live trial's report."""
    from types import SimpleNamespace

    from cerebellum_ray.core import store
    from cerebellum_ray.study.trial import _stored_result

    store.append(tmp_path, {"study": "s", "trial_id": "t1", "strategy": "optuna", "status": "complete",
                            "map_hash": "h", "size_bytes": 7_000_000, "kld": 0.1, "kld_se": 0.01,
                            "pp_tokens_per_s": 950.0, "mc_acc": 0.25, "node": "n", "gpu_ids": ""})
    result = _stored_result(SimpleNamespace(store_dir=str(tmp_path), study="s"), "t1")
    assert result["final"] and result["from_store"]
    assert (result["size"], result["speed"], result["mc"], result["kld"]) == (0.007, 950.0, 0.25, 0.1)
