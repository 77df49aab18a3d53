"""The public command line is kept: every command, option, help text and --json value recorded before the package
moved into rooms (tests/fixtures/cli_snapshot.json) is still there. New options and new keys may be added; nothing
may disappear or change meaning."""

import llama_cpp  # noqa: F401  (before numpy)

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SNAPSHOT = json.loads((FIXTURES / "cli_snapshot.json").read_text())


def _snapshot_module():
    spec = importlib.util.spec_from_file_location("cli_snapshot", FIXTURES / "cli_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_entries(text: str) -> set[str]:
    """Each option, positional argument or subcommand of a help text with its help, whitespace normalized."""
    entries, current = [], None
    for line in text.splitlines():
        if re.match(r"^ {2,4}\S", line):
            current = [line.strip()]
            entries.append(current)
        elif current is not None and line.startswith(" " * 6) and line.strip():
            current.append(line.strip())
        else:
            current = None
    return {" ".join(" ".join(e).split()) for e in entries}


def usage_options(text: str) -> dict[str, bool]:
    """{--flag: required} from a usage block."""
    usage = text.split("\n\n", 1)[0]
    out = {}
    for optional, flag in re.findall(r"(\[?)(-{1,2}[A-Za-z][\w-]*)", usage):
        out.setdefault(flag, not optional)
    return out


def test_a_required_option_may_become_optional_but_not_the_reverse():
    assert usage_options("usage: x [--source SOURCE]") == {"--source": False}
    assert usage_options("usage: x --source SOURCE") == {"--source": True}


def test_help_parsing_finds_options_and_their_text():
    text = ("usage: x [-h] --source SOURCE [--json]\n\noptions:\n  -h, --help  show this\n  --source SOURCE\n"
            "                        the model\n                        it is\n  --json  machine\n")
    assert help_entries(text) == {"-h, --help show this", "--source SOURCE the model it is", "--json machine"}
    assert usage_options(text) == {"-h": False, "--source": True, "--json": False}


@pytest.fixture(scope="module")
def current_help():
    return _snapshot_module().help_texts()


@pytest.mark.parametrize("command", sorted(SNAPSHOT["help"]))
def test_every_recorded_option_and_help_text_is_still_there(command, current_help):
    assert command in current_help, f"command {command!r} is gone"
    before, now = SNAPSHOT["help"][command], current_help[command]
    assert help_entries(before) - help_entries(now) == set()
    required_before = usage_options(before)
    required_now = usage_options(now)
    # every recorded command line still parses: no option gone, none optional before and required now (a required
    # option may become optional: export and verify take --source from the study's record since issue 23)
    assert {f: r for f, r in required_before.items() if f not in required_now or required_now[f] > r} == {}


def _same(before, now, where: str) -> list[str]:
    """Differences of `now` from `before`: keys of `before` missing or changed (floats to 1e-6 relative: the prior's
    errors depend on the CPU's float contraction); keys only in `now` are new and allowed."""
    if isinstance(before, dict):
        if not isinstance(now, dict):
            return [f"{where}: was an object"]
        out = []
        for k, v in before.items():
            out += [f"{where}.{k}: missing"] if k not in now else _same(v, now[k], f"{where}.{k}")
        return out
    if isinstance(before, list):
        if not isinstance(now, list) or len(now) != len(before):
            return [f"{where}: list changed"]
        return [d for i, (a, b) in enumerate(zip(before, now)) for d in _same(a, b, f"{where}[{i}]")]
    if isinstance(before, float) and isinstance(now, (int, float)):
        return [] if math.isclose(before, now, rel_tol=1e-6, abs_tol=1e-12) else [f"{where}: {before} -> {now}"]
    return [] if before == now else [f"{where}: {before!r} -> {now!r}"]


def test_every_recorded_json_output_is_the_same(tmp_path):
    now = _snapshot_module().json_outputs(tmp_path)
    assert sorted(now) == sorted(SNAPSHOT["json"])
    problems = [d for name in SNAPSHOT["json"] for d in _same(SNAPSHOT["json"][name], now[name], name)]
    assert problems == []


def test_the_json_comparison_can_fail():
    assert _same({"a": 1.0, "b": [1, 2]}, {"a": 1.0 + 1e-9, "b": [1, 2], "c": 3}, "x") == []
    assert _same({"a": 1.0}, {"a": 1.1}, "x") and _same({"a": 1}, {}, "x") and _same([1], [1, 2], "x")
