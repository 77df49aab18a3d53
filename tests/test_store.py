"""The Parquet result store: rows of some studies read from the files that can hold them, and nothing else."""

from cerebellum_ray.core import store


def test_rows_of_studies_whose_names_share_prefixes_or_sanitize_alike(tmp_path):
    """Studies "a", "a_b", "a/b" (its file name sanitizes to "a_b") and one longer than a file name shows: each
    study's read returns exactly its own rows."""
    long = "L" * 100
    names = ["a", "a_b", "a/b", "ab", long, long + "x"]
    for i, study in enumerate(names):
        for t in range(2):
            store.append(tmp_path, {"study": study, "trial_id": f"t{t}", "strategy": "optuna", "status": "complete",
                                    "kld": float(i)})
    for i, study in enumerate(names):
        rows = store.rows(tmp_path, [study])
        assert sorted((r["study"], r["trial_id"], r["kld"]) for r in rows) == [(study, "t0", i), (study, "t1", i)]
    assert len(store.rows(tmp_path, ["a", "ab"])) == 4
    assert len(store.rows(tmp_path)) == 2 * len(names)
    assert store.rows(tmp_path, []) == []
    assert store.rows(tmp_path, ["nobody"]) == []
