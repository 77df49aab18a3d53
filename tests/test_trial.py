"""One trial end to end with every objective a space can ask for: KLD, size, HumanEval pass@1, multiple choice and
the code corpus's KLD and PPL."""

from pathlib import Path

import pytest

from cerebellum_ray.core import store
from cerebellum_ray.study.run import SearchOptions, prepare
from cerebellum_ray.study.strategies import run_search
from cerebellum_ray.study.trial import evaluate_point

FIXTURES = Path(__file__).resolve().parent / "fixtures"
pytestmark = pytest.mark.slow


@pytest.fixture
def task_space(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text(
        "name: tasks\nbase: Q4_K_M\nobjectives: [kld, size, humaneval, mc, kld_code]\n"
        "dimensions:\n  - {name: attn_q, select: {group: attn_q}, per: group, types: [Q2_K, Q4_K]}\n"
        f"evaluation: {{ctx: 128, chunks: 2, top_k: 32, humaneval_limit: 2, mc: [{FIXTURES / 'mc_arc_style.jsonl'}]}}\n"
        "search: {trials: 2}\n")
    return path


def test_humaneval_and_mc_objectives_in_a_trial(tiny_models, task_space, tmp_path):
    opts = SearchOptions(space_file=str(task_space), source=str(tiny_models["gemma4"]), study="tasks",
                         store_dir=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), verbose=False)
    ctx = prepare(opts, tmp_path / "work")
    assert len(ctx.mc_items) > 0  # read by the driver, shipped with the context
    reports = []
    final = evaluate_point(ctx, {"attn_q": 0}, reports.append)
    assert final["final"] and reports[-1] is final
    for key in ("kld", "size", "humaneval", "humaneval_se", "mc", "mc_acc", "mc_acc_se", "kld_code", "kld_code_se",
                "ppl_code"):
        assert final[key] is not None, key
    assert 0.0 <= final["humaneval"] <= 1.0 and 0.0 <= final["mc"] <= 1.0
    assert final["kld"] > 0 and final["kld_code"] > 0 and final["kld_code"] != final["kld"]
    assert ctx.code_reference.key.top_k == 32  # the code corpus is scored at the space's K, as its reference


def test_humaneval_and_mc_objectives_through_ray(tiny_models, task_space, tmp_path):
    opts = SearchOptions(space_file=str(task_space), source=str(tiny_models["gemma4"]), study="tasks",
                         store_dir=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), verbose=False,
                         num_cpus=2, scheduler="none")
    run_search(opts)
    rows = [r for r in store.rows(opts.store_dir, ["tasks"]) if r["status"] == "complete"]
    assert rows
    for r in rows:
        assert r["humaneval"] is not None and r["mc_acc"] is not None and r["kld"] is not None
        assert r["kld_code"] is not None and r["ppl_code"] is not None
