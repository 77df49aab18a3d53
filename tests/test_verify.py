"""verify: HumanEval on front members, stored with their rows, paired against the reference model."""

import json
import math

import pytest

from cerebellum_ray.core import store
from cerebellum_ray.cli import main
from cerebellum_ray.results.verify import VerifyError, VerifyOptions, mcnemar_exact, members, paired


def test_mcnemar_exact_on_planted_counts():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 128)  # 2 P(X <= 1), X ~ Bin(7, 1/2)
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def test_paired_comparison_on_a_planted_case():
    """10 problems: the reference passes 0-5, the model passes 0-2 and 6: delta -2/10, b = 1, c = 3."""
    reference = {f"t{i}": i < 6 for i in range(10)}
    model = {f"t{i}": i < 3 or i == 6 for i in range(10)}
    cmp = paired(model, reference)
    assert (cmp.n, cmp.only_model, cmp.only_reference) == (10, 1, 3)
    assert cmp.delta == pytest.approx(-0.2) and cmp.pass_rate == 0.4 and cmp.reference_pass_rate == 0.6
    d = [0, 0, 0, -1, -1, -1, 1, 0, 0, 0]
    mean = sum(d) / 10
    assert cmp.delta_se == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / 9 / 10))
    assert cmp.mcnemar_p == pytest.approx(mcnemar_exact(1, 3))
    with pytest.raises(VerifyError):
        paired({"a": True}, {"b": True})


def test_front_on_picks_the_front_of_the_named_metrics(demo_store):
    """A planted row dominated on (size, kld) but best on kld_code joins the front on (size, kld, kld_code) only."""
    store_dir, source = demo_store
    rows = {r["trial_id"]: r for r in store.rows(store_dir, ["demo"])}
    for tid, code in [("t0", 0.5), ("t1", 0.3), ("t2", 0.2), ("t3", 0.1)]:
        store.append(store_dir, {**rows[tid], "kld_code": code})
    store.append(store_dir, {**rows["t3"], "trial_id": "t4", "kld": 0.02, "kld_code": 0.05})  # Q8_0 size, worse text
    on_text = {r["trial_id"] for r in members(VerifyOptions(store_dir, "demo", source))}
    on_both = {r["trial_id"] for r in members(VerifyOptions(store_dir, "demo", source,
                                                             front_on=("size", "kld", "kld_code")))}
    assert on_text == {"t0", "t1", "t2", "t3"}
    assert on_both == {"t0", "t1", "t2", "t3", "t4"}
    with pytest.raises(VerifyError, match="--front-on size,ppl_code"):
        members(VerifyOptions(store_dir, "demo", source, front_on=("size", "ppl_code")))
    with pytest.raises(VerifyError, match="unknown objectives"):
        members(VerifyOptions(store_dir, "demo", source, front_on=("size", "nonsense")))


@pytest.mark.slow
def test_verify_stores_humaneval_with_the_front_rows(demo_store, capsys):
    store_dir, source = demo_store
    before = {r["trial_id"]: r for r in store.rows(store_dir, ["demo"])}
    assert main(["verify", "--store", store_dir, "--study", "demo", "--source", source, "--limit", "3",
                 "--max-new-tokens", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    verified = {r["trial_id"] for r in out["rows"]}
    assert verified  # the front of the four planted rows
    after = {r["trial_id"]: r for r in store.rows(store_dir, ["demo"])}
    assert set(after) == set(before)
    for trial_id, row in after.items():
        if trial_id in verified:
            assert row["humaneval_n"] == 3 and 0 <= row["humaneval"] <= 1
            assert row["humaneval_mcnemar_p"] is not None and row["humaneval_delta_se"] is not None
            assert row["humaneval_loops"] is not None
            assert row["kld"] == before[trial_id]["kld"]  # the rest of the row is kept
        else:
            assert row["humaneval"] is None
