"""The metric registry: one definition every stage reads (store columns, schema, spaces, fronts, trial reports,
known results), standard library only."""

import json
import subprocess
import sys

import pytest

from cerebellum_ray.core import metrics, store
from cerebellum_ray.core.metrics import METRICS, MetricError


def test_every_metric_lives_in_store_columns():
    names = set(store.SCHEMA.names)
    for m in METRICS:
        assert m.column in names, m.name
        assert m.se_column is None or m.se_column in names, m.name
        assert m.direction in metrics.DIRECTIONS and m.label, m.name
        assert str(store.SCHEMA.field(m.column).type) in ("double", "int64", "int32"), m.name


def test_the_schema_spaces_and_fronts_read_the_registry():
    from cerebellum_ray.core.schema import SPACE_SCHEMA
    from cerebellum_ray.predict.fronts import OBJECTIVES, Front

    assert SPACE_SCHEMA["properties"]["objectives"]["items"]["enum"] == list(metrics.OBJECTIVE_NAMES)
    assert list(OBJECTIVES) == list(metrics.NAMES)
    front = Front("s", ("speed", "mc"), (), 0.0, (0.0, 0.0), (0.0, 0.0))
    assert front.columns == ("pp_tokens_per_s", "mc_acc") and front.directions == ("max", "max")
    assert set(metrics.OBJECTIVE_NAMES) == {"kld", "ppl", "kld_code", "ppl_code", "size", "bpw", "humaneval", "mc",
                                            "speed"}
    assert metrics.SIZE_AXES == ("size", "bpw")
    assert metrics.LATE_NAMES == ("kld_code", "ppl_code", "humaneval", "mc")


def test_a_stored_row_gives_the_objective_vector_a_trial_reported():
    row = {"size_bytes": 5_000_000, "kld": 0.25, "pp_tokens_per_s": 812.5, "mc_acc": 0.5, "ppl": float("nan")}
    assert metrics.objective_values(row, ["kld", "size", "speed"]) == [0.25, 0.005, 812.5]
    assert metrics.objective_values(row, ["kld", "ppl"]) is None  # NaN: not measured
    assert metrics.objective_values(row, ["humaneval"]) is None
    named = metrics.named_values(row)
    assert named == {"size": 0.005, "kld": 0.25, "mc": 0.5, "speed": 812.5}
    assert metrics.metric("size").value(row) == 5_000_000 / 1e9  # the trial's unit, bit for bit


def test_unknown_metrics_and_non_objectives_are_refused_with_the_choices():
    with pytest.raises(MetricError, match="unknown metric 'joy'; choose from size, bpw, kld"):
        metrics.metric("joy")
    with pytest.raises(MetricError, match="unknown objective 'same_top'"):
        metrics.check(["kld", "same_top"], objective=True, what="objective")
    assert metrics.metric("same_top").direction == "max"


def test_the_registry_imports_only_the_standard_library():
    """The command line reads it for --help: no numpy, pyarrow, ray or llama_cpp behind it."""
    code = ("import sys; import cerebellum_ray.core.metrics, cerebellum_ray.core.compat; "
            "import json; print(json.dumps(sorted(sys.modules)))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                           text=True).stdout))
    assert not loaded & {"numpy", "pyarrow", "ray", "llama_cpp", "optuna", "yaml", "jsonschema"}
    assert {m.split(".")[0] for m in loaded if m.startswith("cerebellum_ray")} == {"cerebellum_ray"}
    assert {m for m in loaded if m.startswith("cerebellum_ray")} <= {
        "cerebellum_ray", "cerebellum_ray.core", "cerebellum_ray.core.metrics", "cerebellum_ray.core.errors",
        "cerebellum_ray.core.compat"}


def test_a_former_name_resolves_to_its_new_home():
    import cerebellum_ray.pareto as pareto
    import cerebellum_ray.plots as plots
    from cerebellum_ray.predict.fronts import check_front_objectives

    assert pareto.check_objectives is check_front_objectives and plots.check_objectives is check_front_objectives
    with pytest.raises(AttributeError, match="has no attribute 'nothing_like_this'"):
        pareto.nothing_like_this  # noqa: B018
