"""The sandbox's bootstrap: sets up the isolation of one sandboxed process, then execs its interpreter.

Run as ``python -I -S -c <this file's text> CONFIG`` by the caller's own interpreter (as root when privileges are
dropped), from the working directory of the run; nothing of this project is imported (the standard library only: a
test checks it). CONFIG is a marshalled dict in hex (same interpreter on both sides; json would cost more than the rest
of the bootstrap), made by ``supervise.bootstrap_argv``:

  status_fd     pipe for a setup error (closed on exec: EOF alone means the exec succeeded)
  program       file name in the working directory carried into the private working directory, or None
  unshare       CLONE_* flags for unshare(2) (a new user namespace maps our own ids first)
  mounts        make every mount read-only, a hidepid /proc, fresh tmpfs /tmp & co. and working directory
  workdir, workdir_bytes, tmpfs_bytes, tmpfs_dirs
  rlimits       [(name, soft, hard)] set before the exec
  no_new_privs  PR_SET_NO_NEW_PRIVS
  uid, gid      the unprivileged ids to drop to (None: keep the caller's)
  argv          what to exec

Any failure is written to the status pipe and ends it with exit status 126.
"""

import ctypes
import marshal
import os
import resource
import sys

__all__ = ["main"]

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
# mount options a read-only bind remount must repeat (the kernel refuses to drop them silently)
KEEP = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
        "relatime": 1 << 21, "strictatime": 1 << 24}

libc = None  # set by load_libc(): importing this file for a test binds nothing


def load_libc():
    global libc
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def check(ret):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _bytes(text):
    return None if text is None else text.encode()


def mount(source, target, fstype, flags, data=None):
    check(libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)))


def unescape(path):
    """A path as /proc/self/mountinfo writes it (octal escapes for space, tab, newline, backslash)."""
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


def remount_everything_readonly():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(KEEP.get(o, 0) for o in fields[5].split(","))
            try:
                mount(None, unescape(fields[4]), None, flags)
            except OSError:
                pass  # best effort per mount; the probe measures the result


def private_mounts(cfg):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    remount_everything_readonly()
    for opts in ("hidepid=invisible", "hidepid=2"):
        try:
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
            break
        except OSError:
            pass
    for d in cfg["tmpfs_dirs"]:
        mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={cfg['tmpfs_bytes']},mode=1777")
    workdir = cfg["workdir"]
    os.makedirs(workdir, exist_ok=True)
    owner = "" if cfg["uid"] is None else f",uid={cfg['uid']},gid={cfg['gid']}"
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"size={cfg['workdir_bytes']},mode=0700{owner}")


def new_namespaces(flags):
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(flags))
    if flags & CLONE_NEWUSER:  # map our own ids, so that mounts can be made
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)


def drop_privileges(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def setup(cfg, step):
    """Every step in order; `step` (a one-item list) names the one under way for the error message."""
    source = None
    if cfg["program"] is not None:
        step[0] = "read program"
        with open(cfg["program"], "rb") as f:
            source = f.read()
    if cfg["unshare"]:
        step[0] = "unshare"
        new_namespaces(cfg["unshare"])
    if cfg["mounts"]:
        step[0] = "mounts"
        private_mounts(cfg)
        os.chdir(cfg["workdir"])
        if source is not None:  # the private working directory starts empty
            with open(cfg["program"], "wb") as f:
                f.write(source)
    step[0] = "rlimits"
    os.umask(0o077)
    for name, soft, hard in cfg["rlimits"]:
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
    if cfg["no_new_privs"]:
        step[0] = "no_new_privs"
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    if cfg["uid"] is not None:
        step[0] = "drop privileges"
        drop_privileges(cfg["uid"], cfg["gid"])


def main():
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
    status_fd = cfg["status_fd"]
    step = ["start"]
    try:
        load_libc()
        setup(cfg, step)
        step[0] = "exec"
        os.set_inheritable(status_fd, False)
        os.execv(cfg["argv"][0], cfg["argv"])
    except BaseException as exc:
        os.write(status_fd, (f"{step[0]}: {exc!r}").encode("utf-8", "replace")[:4000])
        os._exit(126)


if __name__ == "__main__":
    main()
