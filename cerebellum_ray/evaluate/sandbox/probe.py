"""Isolation probing: which plan works on this machine, measured from inside a probe sandbox once per process.

As root, programs run with the first interpreter that works as a sandbox uid with the same version and prefix root
sees (``CEREBELLUM_RAY_SANDBOX_PYTHON``, this one, /usr/bin/python3, ...: an interpreter installed under /root is
not readable by other uids); if there is none, nothing is run (every result is an "error" saying so) rather than
running programs as root. Without root the strongest plan that starts is taken: user + network + IPC + mount
namespaces, then without mounts, then none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass

from .config import (CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER, JUDGE_UID_BASE, JUDGE_UID_SLOTS, LANG,
                     SAFE_PATH, SANDBOX_UID_BASE, SANDBOX_UID_SLOTS, Plan, SandboxLimits)
from .supervise import run_sandboxed, sandboxed_argv
from .uids import uid_slot

__all__ = ["Isolation", "sandbox_isolation"]


@dataclass(frozen=True)
class Isolation:
    """What the sandbox does on this machine, as measured by a probe run from inside."""

    python: str                            # interpreter the programs run with
    python_version: str
    uid_drop: bool                         # runs as a dedicated unprivileged uid/gid
    uid_range: tuple[int, int] | None      # [first, last] sandbox uid (gid = uid) when uid_drop
    network_namespace: bool                # no network interface but a down loopback
    ipc_namespace: bool
    user_namespace: bool                   # (non-root) namespaces made inside a user namespace
    mount_namespace: bool                  # private mounts: the items below
    readonly_root: bool                    # every mount read-only
    private_tmp: bool                      # fresh tmpfs /tmp, /var/tmp, /dev/shm, /run/lock and working dir
    proc_hidepid: bool                     # other users' processes (the parent) invisible in /proc
    no_new_privs: bool
    rlimits: tuple[str, ...] = ("CPU", "AS", "FSIZE", "NPROC", "NOFILE", "CORE")
    notes: tuple[str, ...] = ()
    refusal: str = ""                      # non-empty: programs are not run at all (every result an "error")
    judge_uid_range: tuple[int, int] | None = None  # [first, last] uid of the judge servers when uid_drop

    def describe(self) -> str:
        """One line for people."""
        if self.refusal:
            return f"SANDBOX UNAVAILABLE: {self.refusal}"
        parts = [f"uid drop (uids {self.uid_range[0]}..{self.uid_range[1]})" if self.uid_drop and self.uid_range
                 else "NO uid drop (runs as the calling user)"]
        for flag, text in ((self.network_namespace, "no network (netns)"), (self.ipc_namespace, "ipc ns"),
                           (self.user_namespace, "user ns"), (self.readonly_root, "read-only mounts"),
                           (self.private_tmp, "private tmpfs /tmp + workdir"), (self.proc_hidepid, "hidepid /proc"),
                           (self.no_new_privs, "no_new_privs")):
            if flag:
                parts.append(text)
        if not self.network_namespace:
            parts.append("NETWORK NOT ISOLATED")
        parts.append("rlimits " + "/".join(self.rlimits))
        if self.judge_uid_range:
            parts.append(f"verdicts by a separate judge process (uids {self.judge_uid_range[0]}.."
                         f"{self.judge_uid_range[1]})")
        else:
            parts.append("verdicts by a separate judge process of the same user (a program can kill it: no "
                         "verdict, never a pass)")
        return f"{', '.join(parts)}; python {self.python} ({self.python_version})"


# Run in a probe sandbox: what the program itself sees.
PROBE_PROGRAM = r"""
import json, os, socket, sys
mounts = {}
with open("/proc/self/mountinfo") as f:
    for line in f:
        fields = line.split()
        mounts[fields[4]] = fields[fields.index("-") + 1]
print(json.dumps({
    "uid": os.getuid(), "version": sys.version.split()[0], "prefix": sys.base_prefix,
    "interfaces": [name for _, name in socket.if_nameindex()],
    "root_readonly": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "tmp_fs": mounts.get("/tmp"), "cwd_fs": mounts.get(os.getcwd()),
    "parent_visible": os.path.exists("/proc/%d" % os.getppid()),
}))
"""

_isolation: Isolation | None = None
_plan: Plan | None = None
_probe_lock = threading.Lock()


def interpreter_candidates() -> list[str]:
    found = [os.environ.get("CEREBELLUM_RAY_SANDBOX_PYTHON", ""), sys.executable,
             getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3",
             shutil.which("python3", path=SAFE_PATH) or ""]
    unique: list[str] = []
    for p in found:
        if p and os.path.isfile(p) and os.path.realpath(p) not in map(os.path.realpath, unique):
            unique.append(p)
    return unique


def program_argv(plan: Plan) -> list[str]:
    """The sandboxed command of a whole program (the child module in its program mode)."""
    return sandboxed_argv(plan, ("wire", "child"), "child", ["program"])


def probe(plan: Plan) -> dict | None:
    """Run the probe program under `plan`: what it sees, or None if the plan does not work here."""
    limits = SandboxLimits()
    if plan.uid_drop:
        with uid_slot(plan.python) as uid:
            outcome = run_sandboxed(PROBE_PROGRAM, plan, 30.0, limits, uid, program_argv(plan))
    else:
        outcome = run_sandboxed(PROBE_PROGRAM, plan, 30.0, limits, None, program_argv(plan))
    if outcome.setup_error or outcome.returncode != 0 or outcome.timed_out:
        return None
    try:
        return json.loads(outcome.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def host_view(python: str) -> dict | None:
    """The interpreter's version and prefix when run normally by this user."""
    code = "import json, sys; print(json.dumps([sys.version.split()[0], sys.base_prefix]))"
    try:
        res = subprocess.run([python, "-I", "-c", code], check=False, capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, env={"PATH": SAFE_PATH, "LANG": LANG})
        version, prefix = json.loads(res.stdout)
        return {"version": version, "prefix": prefix}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def choose_plan() -> tuple[Plan, dict, list[str]]:
    """Try the strongest plans first; return the first that works, what the probe saw, and notes."""
    if os.geteuid() == 0:
        return choose_root_plan()
    notes = ["not root: no uid drop, programs and the judge run as the calling user"]
    user_ns = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC
    for plan in (Plan(sys.executable, uid_drop=False, unshare=user_ns | CLONE_NEWNS, mounts=True),
                 Plan(sys.executable, uid_drop=False, unshare=user_ns, mounts=False),
                 Plan(sys.executable, uid_drop=False, unshare=0, mounts=False)):
        seen = probe(plan)
        if seen:
            return plan, seen, notes
    return (Plan(sys.executable, uid_drop=False, unshare=0, mounts=False,
                 refusal="the sandbox does not start on this machine"), {}, notes)


def choose_root_plan() -> tuple[Plan, dict, list[str]]:
    """As root: the first interpreter that runs as a sandbox uid, with as many namespaces as work. Refuses
    (every run an "error") rather than run programs as root."""
    notes: list[str] = []
    for python in interpreter_candidates():
        host = host_view(python)
        # A python that cannot read its own installation as the sandbox uid (e.g. one under /root) may still
        # start with another stdlib found elsewhere: insist on the version and prefix root sees.
        for plan in (Plan(python, uid_drop=True, unshare=CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC, mounts=True),
                     Plan(python, uid_drop=True, unshare=CLONE_NEWNET | CLONE_NEWIPC, mounts=False),
                     Plan(python, uid_drop=True, unshare=0, mounts=False)):
            seen = probe(plan)
            if seen and host and (seen["version"], seen["prefix"]) == (host["version"], host["prefix"]):
                if seen["version"] != sys.version.split()[0]:
                    notes.append(f"programs run with Python {seen['version']} ({python}), not this "
                                 f"interpreter's {sys.version.split()[0]}")
                return plan, seen, notes
        notes.append(f"{python} does not run as an unprivileged uid (its installation is not readable by others)")
    refusal = ("no Python interpreter on this machine runs as an unprivileged uid, and programs are never run as "
               "root: set CEREBELLUM_RAY_SANDBOX_PYTHON to an interpreter that every user can read and execute")
    return Plan(sys.executable, uid_drop=False, unshare=0, mounts=False, refusal=refusal), {}, notes


def sandbox_isolation(refresh: bool = False) -> Isolation:
    """What isolation the sandbox applies on this machine (probed once per process, then cached)."""
    global _isolation, _plan
    with _probe_lock:
        if _isolation is None or refresh:
            plan, seen, notes = choose_plan()
            netns = seen.get("interfaces") == ["lo"]
            if not netns and not plan.refusal:
                notes.append("network namespace unavailable: programs can reach the network")
            _plan = plan
            _isolation = Isolation(
                python=plan.python, python_version=seen.get("version", "?"), uid_drop=plan.uid_drop,
                uid_range=(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS - 1) if plan.uid_drop else None,
                network_namespace=netns, ipc_namespace=bool(plan.unshare & CLONE_NEWIPC),
                user_namespace=bool(plan.unshare & CLONE_NEWUSER), mount_namespace=plan.mounts,
                readonly_root=bool(seen.get("root_readonly")),
                private_tmp=plan.mounts and seen.get("tmp_fs") == "tmpfs" and seen.get("cwd_fs") == "tmpfs",
                proc_hidepid=plan.uid_drop and seen.get("parent_visible") is False,
                no_new_privs=plan.no_new_privs, notes=tuple(notes), refusal=plan.refusal,
                judge_uid_range=(JUDGE_UID_BASE, JUDGE_UID_BASE + JUDGE_UID_SLOTS - 1) if plan.uid_drop else None)
        return _isolation


def current_plan() -> Plan:
    sandbox_isolation()
    assert _plan is not None
    return _plan
