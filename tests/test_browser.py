"""The HTML report and the plot pages in a real browser (headless Chromium, Debian's `chromium`, which .ci/run
installs): they load with no console error, no uncaught exception and no network request, and draw what they
promise. Skipped, with the reason, only where Chromium is missing or cannot start."""

import llama_cpp  # noqa: F401

import pytest

from cerebellum_ray.core import store
from cerebellum_ray.results.browser import BrowserError, check_page, find_chromium

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    try:
        binary = find_chromium()
        blank = tmp_path_factory.mktemp("blank") / "blank.html"
        blank.write_text("<!doctype html><title>blank</title>")
        check_page(blank, binary=binary, wait=0.1)
    except BrowserError as exc:
        pytest.skip(f"headless Chromium cannot run here: {exc}")
    return binary


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """A planted study: an ablation from its base (sensitivity bars), a front, two presets as reference points."""
    d = tmp_path_factory.mktemp("pages") / "store"
    base = {"study": "s", "strategy": "ablation", "status": "complete", "kld_se": 0.001, "ppl": 12.0, "ppl_se": 0.2,
            "build_s": 2.0, "load_s": 0.5, "score_s": 30.0, "node": "host", "map": {"blk.0.attn_q.weight": "Q4_K"}}
    rows = [("base", "base", 0.02, 5.0e6), ("m0", "group attn_q=Q2_K", 0.05, 4.8e6),
            ("m1", "group ffn_up=Q2_K", 0.018, 4.5e6), ("m2", "layer attn_q.L0=Q5_K", 0.015, 5.1e6)]
    for tid, label, kld, size in rows:
        store.append(d, {**base, "trial_id": tid, "label": label, "kld": kld, "size_bytes": int(size),
                         "bpw": size / 1.25e6, "humaneval": 0.3 - kld})
    for tid, kld, size in (("Q3_K_M", 0.03, 4.7e6), ("Q4_K_M", 0.012, 5.6e6)):
        store.append(d, {**base, "trial_id": tid, "label": tid, "strategy": "preset", "kld": kld,
                         "size_bytes": int(size), "bpw": size / 1.25e6, "humaneval": 0.3 - kld})
    return d


def _assert_clean(result):
    assert result.clean, result.problems()


def test_the_check_sees_errors_and_requests(chromium, tmp_path):
    """The control: a page that logs an error, throws late and asks the network for a script is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><title>bad</title><script src='https://cdn.example.org/x.js'></script>"
                   "<script>console.error('boom'); setTimeout(() => { throw new Error('late'); }, 50);</script>")
    result = check_page(bad, binary=chromium, wait=0.5)
    assert not result.clean
    assert "https://cdn.example.org/x.js" in result.requests
    assert any("boom" in c["text"] for c in result.errors) and any("late" in e for e in result.exceptions)


def test_report_page_opens_clean(chromium, study_store, tmp_path):
    from cerebellum_ray.results.report import write_report

    page = write_report(str(study_store), "s", str(tmp_path / "report.html"))
    result = check_page(page, tmp_path / "report.png", binary=chromium)
    _assert_clean(result)
    assert result.probe["images"] >= 2 and result.probe["broken_images"] == 0  # the front and the bars, drawn
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("axes", [["--y", "kld"], ["--y", "kld", "--y", "humaneval"]], ids=["2d", "3d"])
def test_plot_pages_open_clean(chromium, study_store, tmp_path, axes):
    from cerebellum_ray.cli import main

    page = tmp_path / "front.html"
    assert main(["pareto", "--store", str(study_store), *axes, "--plot", str(page), "--json"]) == 0
    result = check_page(page, tmp_path / "front.png", binary=chromium, wait=1.5)
    _assert_clean(result)
    assert result.probe["plots"] == 1 and result.probe["plotly"]
    assert result.probe["svgs"] >= 1
