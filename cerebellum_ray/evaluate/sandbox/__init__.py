"""A process sandbox for untrusted Python (HumanEval completions), and a trusted judge of what it returns.

A judged run (``run.run_judged``, what HumanEval uses) starts two processes and trusts one:

* the PROGRAM (untrusted) runs ``prompt + completion`` only, never the tests, and answers calls of the entry point
  on two dedicated pipes (``child.py``); it holds no secret and no descriptor that leads to a verdict;
* the JUDGE (trusted; it runs no byte of untrusted code) executes the dataset's prompt alone for its helpers, binds
  ``candidate`` to a proxy that forwards each call to the program, runs the dataset's ``check`` and decides
  (``judge.py``). Every byte from the program is decoded strictly into builtin values (``wire.py``): no object of
  the program's choosing reaches the test. Judges are forked by one judge server per process
  (``judge_server.py``, managed by ``judge_client.py``), itself sandboxed as a uid of its own;
* the parent counts only the verdict the judge writes on a pipe that no sandboxed program holds.

Whatever a program reaches inside its own interpreter (a frame walk from a signal handler, a trace function, a
finalizer, a thread), the decision is in another process. The isolation around both (``bootstrap.py``, started by
``supervise.py``, the one run path of every sandboxed process): rlimits (CPU, memory, file size, processes, files,
no core), its own session and process group killed after every run, (root) a dedicated unprivileged uid per
concurrent run (``uids.py``), network/IPC/mount namespaces with read-only mounts, private tmpfs and a hidepid
/proc, no_new_privs, a scrubbed environment, and in the program an audit hook and a non-dumpable process. What is
in effect on this machine is probed once per process (``probe.py``); outcomes are classified in ``results.py``.

Imports nothing eagerly: import from the submodules. Every name of the former single module
``cerebellum_ray.evaluate.sandbox`` (and of ``cerebellum_ray.sandbox``) still resolves here, lazily.
"""

from __future__ import annotations

__all__ = [
    "Isolation", "RunResult", "STATUSES", "SandboxLimits", "judge_uid_processes", "kill_uid", "run_judged",
    "run_python", "sandbox_isolation", "sandbox_uid_processes", "shutdown_judge_server",
]

# name here -> "module" (same name there) or "module:name there". The former module's private names included.
_HOMES = {
    "Isolation": "probe", "RunResult": "results", "STATUSES": "results", "SandboxLimits": "config",
    "judge_uid_processes": "uids", "kill_uid": "uids", "run_judged": "run", "run_python": "run",
    "sandbox_isolation": "probe", "sandbox_uid_processes": "uids", "shutdown_judge_server": "judge_client",
    "CLONE_NEWIPC": "config", "CLONE_NEWNET": "config", "CLONE_NEWNS": "config", "CLONE_NEWUSER": "config",
    "SANDBOX_UID_BASE": "config", "SANDBOX_UID_SLOTS": "config", "JUDGE_UID_BASE": "config",
    "JUDGE_UID_SLOTS": "config", "dataclass": "config", "Iterator": "uids", "Path": "supervise",
    "_LANG": "config:LANG", "_SAFE_PATH": "config:SAFE_PATH", "_WORLD_WRITABLE_DIRS": "config:WORLD_WRITABLE_DIRS",
    "_Plan": "config:Plan", "_pids_of_uid": "uids:pids_of_uid", "_pids_of_uids": "uids:pids_of_uids",
    "_uid_is_free": "uids:uid_is_free", "_lock_dir": "uids:lock_dir", "_try_lock": "uids:try_lock",
    "_uid_slot": "uids:uid_slot", "_kill_uid_commands": "uids:kill_uid_commands", "_Capture": "supervise",
    "_Pipes": "supervise", "_RunOutcome": "supervise:Outcome", "_rlimits": "supervise:rlimits",
    "_has_exited": "supervise:has_exited", "_kill_group": "supervise:kill_group", "_kill_all": "supervise:kill_all",
    "_remove_tree": "supervise:remove_tree", "_bootstrap_argv": "supervise:bootstrap_argv",
    "_supervise": "supervise:supervise", "_run_sandboxed": "supervise:run_sandboxed",
    "_SIGNAL_REASONS": "results:SIGNAL_REASONS", "_tail": "results:tail", "_last_line": "results:last_line",
    "_classify": "results:classify", "_PROBE_PROGRAM": "probe:PROBE_PROGRAM", "_isolation": "probe",
    "_plan": "probe", "_probe_lock": "probe", "_probe": "probe:probe", "_host_view": "probe:host_view",
    "_choose_plan": "probe:choose_plan", "_choose_root_plan": "probe:choose_root_plan",
    "_interpreter_candidates": "probe:interpreter_candidates", "_current_plan": "probe:current_plan",
}
# the former in-line program texts, now real files read as source
_SOURCES = {"_BOOTSTRAP": "bootstrap", "_RUNNER": "child"}


def __getattr__(name: str):
    import importlib

    if name in _SOURCES:
        return importlib.import_module(f"{__name__}.supervise").source_text(_SOURCES[name])
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, there = _HOMES[name].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), there or name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES) | set(_SOURCES))
