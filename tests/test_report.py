"""Honest views: the report's sensitivities, its budget table and sizes, and values near zero (planted rows, no
Ray). Each test failed on the report before issue 23: -1e10 % bars against a base that is the reference, the
budget as raw JSON ({"complete": 13}), sizes of a 5 MB model in GB, the reference's KLD as -0.00000."""

import llama_cpp  # noqa: F401

import pytest

from cerebellum_ray.core import store
from cerebellum_ray.core.units import change_text, near_zero, size_text, size_unit, value_text
from cerebellum_ray.results.report import ablation_sensitivities, write_report


def _ablation_rows(base_kld: float, base_se: float) -> list[dict]:
    rows = [{"study": "a", "trial_id": "base", "label": "base", "strategy": "ablation", "status": "complete",
             "kld": base_kld, "kld_se": base_se, "size_bytes": 5_000_000, "bpw": 4.0, "ppl": 12.0, "ppl_se": 0.1,
             "build_s": 2.0, "load_s": 0.5, "score_s": 30.0, "node": "host-a"}]
    for i, (move, kld, size) in enumerate([("group attn_q=Q2_K", 0.05, 4_800_000), ("group ffn_up=Q2_K", 0.01,
                                           4_500_000), ("layer attn_q.L3=Q5_K", 0.002, 5_100_000)]):
        rows.append({**rows[0], "trial_id": f"m{i}", "label": move, "kld": kld, "kld_se": kld / 50,
                     "size_bytes": size})
    rows.append({**rows[0], "trial_id": "p1", "label": "pruned one", "status": "pruned", "kld": None})
    return rows


@pytest.fixture
def reference_base_store(tmp_path):
    """An ablation from the reference itself: base KLD -3e-10 +/- 1e-10, as on the real model."""
    for r in _ablation_rows(-3.0435e-10, 1e-10):
        store.append(tmp_path / "store", r)
    return tmp_path / "store"


def test_changes_against_a_base_of_zero_are_differences(reference_base_store):
    rows = store.rows(reference_base_store)
    sens = ablation_sensitivities(rows)
    assert not sens.relative
    by_move = {m.move: m for m in sens["group"]}
    assert by_move["attn_q=Q2_K"].change == pytest.approx(0.05 + 3.0435e-10)
    assert by_move["attn_q=Q2_K"].change_se == pytest.approx((0.001 ** 2 + 1e-20) ** 0.5)
    relative = ablation_sensitivities([{**r, "kld": 0.01 if r["label"] == "base" else r["kld"]} for r in rows])
    assert relative.relative and {m.move: m.change for m in relative["group"]}["attn_q=Q2_K"] == pytest.approx(4.0)


def test_report_page_is_honest_about_zero_the_budget_and_units(reference_base_store, tmp_path):
    out = tmp_path / "report.html"
    write_report(str(reference_base_store), "a", str(out))
    page = out.read_text()
    assert "e+10" not in page and "e+09" not in page
    assert "KLD difference" in page and "+0.05000 &plusmn; 0.00100" in page
    assert "mean KLD 0 &plusmn; 1e-10" in page  # the base, not -0.00000 or -3.0435e-10
    assert "-0.00000" not in page and "3.0435e-10" not in page
    assert '{"complete"' not in page and "&nbsp;&nbsp;complete</th><td>4</td>" in page
    assert "&nbsp;&nbsp;pruned</th><td>1</td>" in page and "<td>host-a</td>" in page
    assert "<th>building</th><td>10.0 s</td>" in page and "<th>scoring</th><td>2.5 min</td>" in page
    assert "size (MB)" in page and "size (GB)" not in page and "<td>5</td>" in page  # 5 MB, not 0.0050 GB
    assert "<td>0 &plusmn; 1e-10</td>" in page  # the base on the front table


def test_numbers_for_people():
    assert value_text(-3.0435e-10, 1e-10) == "0 +/- 1e-10" and value_text(-3e-10) == "0"
    assert value_text(0.012341, 0.00012) == "0.01234 +/- 0.00012" and value_text(None) == "-"
    assert near_zero(1e-4, 2e-4) and not near_zero(1e-3, 2e-4)
    assert change_text(0.02, 0.01, 0.0001) == "+100.0%" and change_text(0.02, 1e-10, 1e-10) == "+0.02000 (absolute)"
    assert size_unit(5_067_584) == ("MB", 1e6) and size_unit(11.7e9) == ("GB", 1e9) and size_unit(900) == ("B", 1.0)
    assert size_text(5_067_584) == "5.07 MB" and size_text(11_700_000_000) == "11.7 GB"


def test_pareto_prints_the_reference_kld_as_zero(tmp_path, capsys):
    from cerebellum_ray.cli import main

    for tid, kld, size in (("a", 0.02, 4e6), ("b", 0.01, 5e6), ("c", 0.05, 3e6)):
        store.append(tmp_path / "s", {"study": "x", "trial_id": tid, "strategy": "optuna", "status": "complete",
                                      "kld": kld, "kld_se": 1e-4, "size_bytes": int(size), "bpw": size / 1e6})
    store.append(tmp_path / "s", {"study": "x", "trial_id": "ref", "strategy": "reference", "status": "complete",
                                  "label": "F16", "kld": -3.0435e-10, "size_bytes": 20_000_000, "bpw": 16.0})
    assert main(["pareto", "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "F16 (16.000 bpw, kld 0)" in out and "e-10" not in out
