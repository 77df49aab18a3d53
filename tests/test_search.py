"""The search service on Ray: fractional GPUs, two nodes, kill and resume, pruning, invalid spaces.

These start Ray (tens of seconds each on 2 cores); they are the slowest tests of the default run.
"""

import llama_cpp  # noqa: F401

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cerebellum_ray.core import store
from cerebellum_ray.study.run import SearchOptions, init_ray, trial_resources
from cerebellum_ray.study.strategies import run_search
from cerebellum_ray.formats.space import SpaceError

pytestmark = pytest.mark.slow
SPACE = str(Path("search_spaces/tiny-gemma4.yaml").resolve())


def _opts(tiny_models, tmp_path, **kw):
    base = dict(space_file=SPACE, source=str(tiny_models["gemma4"]), study="t", store_dir=str(tmp_path / "store"),
                trials=4, verbose=False, cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return SearchOptions(**base)


@pytest.fixture
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_fractional_gpu_trials_share_devices(local_ray, tmp_path):
    """4 trials at 0.5 GPU on 2 logical GPUs run at the same time, each with its own CUDA_VISIBLE_DEVICES."""
    from ray import tune

    opts = SearchOptions(space_file=SPACE, source="", study="gpu", store_dir=str(tmp_path), gpus_per_trial=0.5,
                         cpus_per_trial=0.5)
    resources = trial_resources(opts, init_ray(opts))
    assert resources == {"cpu": 0.5, "gpu": 0.5}
    barrier = tmp_path / "barrier"
    barrier.mkdir()

    def probe(config):
        (barrier / str(config["i"])).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        deadline = time.time() + 60
        while len(list(barrier.iterdir())) < 4 and time.time() < deadline:
            time.sleep(0.1)
        tune.report({"together": len(list(barrier.iterdir())), "devices": os.environ.get("CUDA_VISIBLE_DEVICES")})

    results = tune.Tuner(tune.with_resources(probe, resources), param_space={"i": tune.grid_search([0, 1, 2, 3])},
                         run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    together = [r.metrics["together"] for r in results]
    devices = sorted(r.metrics["devices"] for r in results)
    assert together == [4, 4, 4, 4]
    assert devices == ["0", "0", "1", "1"]


def test_no_gpu_in_cluster_falls_back_to_cpu_trials(tmp_path, capsys):
    opts = SearchOptions(space_file=SPACE, source="", study="x", store_dir=str(tmp_path), gpus_per_trial=0.25)
    assert trial_resources(opts, {"CPU": 2.0}) == {"cpu": 1.0, "gpu": 0.0}
    assert "no GPU" in capsys.readouterr().err


def test_search_stores_every_trial_and_prunes_in_optuna(local_ray, tiny_models, tmp_path):
    import optuna

    opts = _opts(tiny_models, tmp_path, trials=8, scheduler="asha", study="asha")
    result = run_search(opts)
    rows = store.rows(opts.store_dir, ["asha"])
    assert len(rows) == 8 == len({r["trial_id"] for r in rows})
    assert {r["status"] for r in rows} <= {"complete", "pruned"}
    complete = [r for r in rows if r["status"] == "complete"]
    assert complete and all(r["chunks_done"] == r["n_chunks"] for r in complete)
    assert all(r["map"]["blk.0.attn_q.weight"] for r in complete) and all(r["kld"] > 0 for r in complete)
    journal = Path(opts.store_dir) / "_optuna" / "asha.journal"
    study = optuna.load_study(study_name="asha", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    states = {t.number: t.state for t in study.trials}
    for r in rows:
        expected = optuna.trial.TrialState.COMPLETE if r["status"] == "complete" else optuna.trial.TrialState.PRUNED
        assert states[r["optuna_trial"]] == expected
    pruned = [r for r in rows if r["status"] == "pruned"]
    for r in pruned:
        assert r["chunks_done"] < r["n_chunks"]
        assert study.trials[r["optuna_trial"]].values is None  # never COMPLETE with partial values
    assert result.n_trials == 8


def test_invalid_space_is_refused_before_any_trial(tiny_models, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(SPACE).read_text().replace("types: [Q2_K, Q3_K, Q4_K, Q5_K]", "types: [Q2_K, Q9_K]"))
    opts = _opts(tiny_models, tmp_path, space_file=str(bad))
    with pytest.raises(SpaceError, match="dimension attn_q: unknown ggml type"):
        run_search(opts)
    assert not Path(opts.store_dir).exists() or store.rows(opts.store_dir) == []


def test_two_node_cluster_spreads_trials(tiny_models, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        opts = _opts(tiny_models, tmp_path, trials=6, address=cluster.address, study="two", scheduler="none")
        run_search(opts)
        rows = store.rows(opts.store_dir, ["two"])
        assert len(rows) == 6 == len({r["trial_id"] for r in rows})
        assert all(r["status"] == "complete" for r in rows)
        nodes = {r["node"] for r in rows}
        assert len(nodes) == 2, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def _search_killed_then_resumed(space: str, source, study: str, store_dir: Path, cache: Path, trials: int,
                                kill_after: int) -> tuple[dict, subprocess.CompletedProcess]:
    """`search` as a command, its driver (and the local Ray it started) killed once `kill_after` rows are stored,
    then run again with --resume: (the rows stored before the kill by trial id, the resumed run)."""
    cmd = [sys.executable, "-m", "cerebellum_ray.cli", "search", "--space", space, "--source", str(source),
           "--study", study, "--store", str(store_dir), "--trials", str(trials), "--num-cpus", "2", "--scheduler",
           "none", "--cache-dir", str(cache), "--json"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(store_dir.glob("*.parquet"))) < kill_after and proc.poll() is None:
        time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["trial_id"]: r for r in store.rows(store_dir, [study])}
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return before, done


def test_killed_driver_resumes_without_losing_or_repeating(tiny_models, tmp_path):
    store_dir = tmp_path / "store"
    before, done = _search_killed_then_resumed(SPACE, tiny_models["gemma4"], "kill", store_dir, tmp_path / "cache",
                                               trials=8, kill_after=3)
    assert 3 <= len(before) < 8
    after = {r["trial_id"]: r for r in store.rows(store_dir, ["kill"])}
    assert len(after) == 8
    for trial_id, row in before.items():  # finished before the kill: kept as they were, not run again
        assert after[trial_id]["finished_at"] == row["finished_at"]
        assert after[trial_id]["map_hash"] == row["map_hash"]
    summary = json.loads(done.stdout)
    assert summary["trials"] == 8


def test_ablation_results_warm_start_an_optuna_study(tiny_models, tmp_path):
    """Finished rows of another study (same space and evaluation) become finished multi-objective Optuna trials."""
    import optuna

    from cerebellum_ray.study.run import prepare
    from cerebellum_ray.study.search import _make_searcher_class, add_finished_trials, warm_start_points

    opts = _opts(tiny_models, tmp_path)
    ctx = prepare(opts, tmp_path / "work")
    point = {d.param: 0 for d in ctx.space.dimensions}
    for i, kld in enumerate((0.5, 0.7)):
        point = {**point, "attn_k": i}
        store.append(opts.store_dir, {"study": "abl", "trial_id": f"a{i}", "strategy": "ablation",
                                      "status": "complete", "params": point, "eval_hash": ctx.eval_hash,
                                      "kld": kld, "size_bytes": 5_000_000 + i})
    store.append(opts.store_dir, {"study": "abl", "trial_id": "other-eval", "strategy": "ablation",
                                  "status": "complete", "params": point, "eval_hash": "x", "kld": 0.1,
                                  "size_bytes": 1})
    seeds = warm_start_points(opts.store_dir, ["abl"], ctx)
    assert sorted(v for _, v in seeds) == [[0.5, 0.005], [0.7, 0.005000001]]
    searcher = _make_searcher_class()(ctx, {}, sampler=optuna.samplers.NSGAIISampler(seed=0), study_name="warm")
    assert add_finished_trials(searcher._ot_study, ctx.space, seeds) == 2
    trials = searcher._ot_study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].values == [0.5, 0.005] and trials[1].params["attn_k"] == 1


def test_ablation_runs_from_the_preset_itself_and_resumes(local_ray, tiny_models, tmp_path):
    """The whole ablation on Ray: the base row is the preset's map exactly (Q4_K_M mixes attn_v types across
    layers, which no point of a per-group dimension can hold), every move changes only its own tensors, the summary
    is written, and a rerun answers every step from the store."""
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import MapSpec, resolve

    space_file = tmp_path / "mixed.yaml"
    space_file.write_text(
        "name: mixed\nbase: Q4_K_M\nobjectives: [kld, size]\n"
        "dimensions:\n"
        "  - {name: attn_v, select: {group: attn_v}, per: group, types: [Q4_K, Q6_K]}\n"
        "  - {name: attn_k, select: {group: attn_k}, per: group, types: [Q3_K, Q4_K]}\n"
        "evaluation: {ctx: 128, chunks: 3, top_k: 64}\n")
    opts = _opts(tiny_models, tmp_path, space_file=str(space_file), strategy="ablation", study="abl")
    run_search(opts)
    rows = {r["label"]: r for r in store.rows(opts.store_dir, ["abl"])}
    cat = load_catalog(tiny_models["gemma4"])
    preset = resolve(cat, MapSpec(base="Q4_K_M"))
    assert dict(rows["base"]["map"]) == dict(preset.types)
    assert len({preset.types[t.name] for t in cat.tensors if t.group == "attn_v"}) > 1
    moves = {label: r for label, r in rows.items() if label.startswith("group ")}
    assert set(moves) >= {"group attn_v=Q4_K", "group attn_v=Q6_K", "group attn_k=Q3_K"}
    for label, r in moves.items():
        group = label.split()[1].split("=")[0]
        changed = {n for n, t in dict(r["map"]).items() if preset.types[n] != t}
        assert changed and all(cat.by_name[n].group == group for n in changed), label
        assert r["status"] == "complete" and r["kld"] > 0
    summary = (Path(opts.store_dir) / "abl-ablation.md").read_text()
    assert "| base (Q4_K_M) |" in summary and "group attn_v=Q6_K" in summary
    n_rows = len(store.rows(opts.store_dir, ["abl"]))
    run_search(opts)  # everything is known: no new trial
    assert len(store.rows(opts.store_dir, ["abl"])) == n_rows


def test_base_override_replaces_the_space_base(tiny_models):
    """--base PRESET: the same dimensions, every other tensor from that preset; a bad preset fails before Ray."""
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import MapError, MapSpec, resolve
    from cerebellum_ray.study.run import with_base
    from cerebellum_ray.formats.space import load_space

    cat = load_catalog(tiny_models["gemma4"])
    space = load_space(SPACE, cat)
    moved = with_base(space, cat, "Q4_K_M")
    assert space.base.base == "Q3_K_M" and moved.base.base == "Q4_K_M" and moved.dimensions == space.dimensions
    assert moved.map_for(cat, {}).digest == resolve(cat, MapSpec(base="Q4_K_M")).digest
    point = {d.param: 0 for d in space.dimensions}
    assert moved.map_for(cat, point).digest != space.map_for(cat, point).digest  # e.g. attn_v follows the base
    with pytest.raises(MapError, match="unknown base preset 'Q9_K'"):
        with_base(space, cat, "Q9_K")


def _stopper(tiny_models, finished=()):
    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.study.search import _make_dominance_stopper
    from cerebellum_ray.formats.space import load_space

    return _make_dominance_stopper(load_space(SPACE, load_catalog(tiny_models["gemma4"])), finished)


def _running(size, kld, se, chunks=3):
    return {"size": size, "kld": kld, "kld_se": se, "chunks_done": chunks, "final": False}


def test_dominance_stopper_stops_exactly_the_dominated_trial(tiny_models):
    stop = _stopper(tiny_models)
    assert not stop("done", {"size": 1.0, "kld": 0.10, "kld_se": 0.01, "chunks_done": 6, "final": True})
    assert stop("worse and larger", _running(1.5, 0.50, 0.01))
    assert not stop("within 3 standard errors", _running(1.5, 0.12, 0.01))
    assert not stop("smaller: leads on size", _running(0.5, 0.90, 0.01))
    assert not stop("better: leads on KLD", _running(2.0, 0.05, 0.01))
    assert not stop("too early to judge", _running(1.5, 0.50, 0.01, chunks=1))
    assert not stop.stop_all()


def test_dominance_stopper_is_seeded_with_known_results(tiny_models):
    assert _stopper(tiny_models, [(1.0, 0.1)])("t", _running(1.5, 0.5, 0.01))
    assert not _stopper(tiny_models)("t", _running(1.5, 0.5, 0.01))


def test_dominance_stopping_prunes_trials_and_tells_optuna(local_ray, tiny_models, tmp_path):
    """A planted, known result (the smallest map of the space with KLD 0, as from a warm-start study) dominates
    every trial: the default scheduler stops them after two chunks; each is stored as pruned and PRUNED in Optuna,
    with no objective values."""
    import optuna

    from cerebellum_ray.formats.catalog import load_catalog
    from cerebellum_ray.formats.precision_map import tensor_bytes
    from cerebellum_ray.study.run import prepare

    opts = _opts(tiny_models, tmp_path, trials=4, study="pruned", warm_start=("planted",), max_concurrent=1)
    ctx = prepare(opts, tmp_path / "work")
    cat = load_catalog(ctx.source)
    smallest = {d.param: 0 for d in ctx.space.dimensions}
    pmap = ctx.space.map_for(cat, smallest)
    store.append(opts.store_dir, {"study": "planted", "trial_id": "p", "strategy": "optuna", "status": "complete",
                                  "map": dict(pmap.types), "map_hash": pmap.digest, "params": smallest,
                                  "eval_hash": ctx.eval_hash, "kld": 0.0, "kld_se": 0.0,
                                  "size_bytes": tensor_bytes(cat, pmap)})
    run_search(opts)
    rows = store.rows(opts.store_dir, ["pruned"])
    pruned = [r for r in rows if r["status"] == "pruned"]
    assert pruned, [(r["status"], r["kld"]) for r in rows]
    study = optuna.load_study(study_name="pruned", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(Path(opts.store_dir) / "_optuna" / "pruned.journal"))))
    for r in pruned:
        assert r["chunks_done"] == 2 < r["n_chunks"]
        trial = study.trials[r["optuna_trial"]]
        assert trial.state == optuna.trial.TrialState.PRUNED and trial.values is None


def test_names_older_experiments_pickled_still_resolve():
    """Tune experiments stored by earlier versions refer to these by cerebellum_ray.search.<name> (resume of such an
    experiment with this version was checked by hand: 3 trials stored by the old code, 5 more after --resume)."""
    import cerebellum_ray.search as search

    for name in ("SearchOptions", "SearchResult", "eval_text", "prepare", "with_base", "_materialize",
                 "_make_searcher_class", "_map_size", "_constraint_excess", "warm_start_points", "add_finished_trials",
                 "_make_dominance_stopper", "_versions", "_make_callbacks", "_error_message", "_RayMetrics",
                 "_make_progress_callback", "init_ray", "trial_resources", "known_results", "run_optuna",
                 "_restore_callbacks", "run_maps", "preset_specs", "map_file_spec", "run_search", "PENALTY", "log"):
        assert hasattr(search, name), name


def test_a_space_may_have_its_imatrix_made_once_from_a_text(tiny_models, tmp_path):
    """`imatrix: {text: builtin, ctx, chunks}`: prepare makes it (before Ray), records it with the study, and finds
    it again next time; `imatrix: FILE` is read beside the space; --imatrix overrides both."""
    import yaml

    from cerebellum_ray.formats.imatrix import load_imatrix
    from cerebellum_ray.study.run import StudyRecord, prepare

    data = yaml.safe_load(Path(SPACE).read_text())
    data["imatrix"] = {"text": "builtin", "ctx": 64, "chunks": 2}
    space = tmp_path / "made.yaml"
    space.write_text(yaml.safe_dump(data))
    opts = _opts(tiny_models, tmp_path, space_file=str(space))
    ctx = prepare(opts)
    made = Path(ctx.imatrix_path)
    assert made.parent == tmp_path / "cache" / "imatrix" and load_imatrix(made).chunk_count == 2
    assert StudyRecord.load(opts.store_dir, "t").imatrix == str(made)
    stamp = made.stat().st_mtime_ns
    assert Path(prepare(opts).imatrix_path) == made and made.stat().st_mtime_ns == stamp  # made once
    data["imatrix"] = {"text": "builtin", "ctx": 64, "chunks": 3}
    space.write_text(yaml.safe_dump(data))
    assert Path(prepare(opts).imatrix_path) != made  # other settings, another matrix
    data["imatrix"] = made.name
    (tmp_path / made.name).write_bytes(made.read_bytes())
    space.write_text(yaml.safe_dump(data))
    assert prepare(opts).imatrix_path == str((tmp_path / made.name).resolve())
    given = tmp_path / "given.imatrix"
    given.write_bytes(made.read_bytes())
    assert prepare(_opts(tiny_models, tmp_path, space_file=str(space), imatrix=str(given))).imatrix_path == str(given)
    data["imatrix"] = {"text": "builtin", "chat_text": "builtin"}
    space.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError, match="imatrix"):
        prepare(opts)


def test_the_speed_objective_runs_resumes_and_answers_duplicates(tiny_models, tmp_path):
    """objectives [kld, size, speed]: a study killed after its first rows resumes to the end; every trial is told to
    Optuna as (KLD, GB, prompt tokens/s) of its row; every stored row is a known result and a warm-start point (the
    store has no `speed` column: the registry reads pp_tokens_per_s), so a duplicate proposal is answered from it."""
    import optuna

    from cerebellum_ray.study.run import prepare
    from cerebellum_ray.study.search import _make_searcher_class, known_results, warm_start_points

    space = tmp_path / "speed.yaml"
    space.write_text(Path(SPACE).read_text().replace("objectives: [kld, size]", "objectives: [kld, size, speed]"))
    store_dir = tmp_path / "store"
    before, _ = _search_killed_then_resumed(str(space), tiny_models["gemma4"], "speed", store_dir, tmp_path / "cache",
                                            trials=4, kill_after=2)
    assert 2 <= len(before) <= 4
    rows = store.rows(store_dir, ["speed"])
    assert len(rows) == 4 and all(r["status"] == "complete" for r in rows)
    assert all(r["finished_at"] == {x["trial_id"]: x for x in rows}[t]["finished_at"] for t, r in before.items())
    study = optuna.load_study(study_name="speed", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(store_dir / "_optuna" / "speed.journal"))))
    for r in rows:
        trial = study.trials[r["optuna_trial"]]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values == [r["kld"], r["size_bytes"] / 1e9, r["pp_tokens_per_s"]] and r["pp_tokens_per_s"] > 0

    opts = _opts(tiny_models, tmp_path, space_file=str(space), study="speed", store_dir=str(store_dir))
    ctx = prepare(opts, tmp_path / "work")
    known = known_results(str(store_dir), "speed", ctx)
    assert set(known) == {r["map_hash"] for r in rows}  # no row skipped
    assert sorted(v for _, v in warm_start_points(str(store_dir), ["speed"], ctx)) == sorted(known.values())
    searcher = _make_searcher_class()(ctx, known, sampler=optuna.samplers.NSGAIISampler(seed=0), study_name="dup")
    row = rows[0]
    searcher._ot_study.enqueue_trial({k: v for k, v in json.loads(row["params"]).items()})
    proposal = searcher.suggest("next")
    assert searcher.skipped["duplicate"] >= 1 and proposal is not None
    answered = searcher._ot_study.trials[0]
    assert answered.state == optuna.trial.TrialState.COMPLETE and answered.values == known[row["map_hash"]]
