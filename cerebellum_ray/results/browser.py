"""A page opened in headless Chromium: what its console said, what it asked the network for, what it looks like.

The report and the plot pages claim to be single files that open offline; this is how that is checked, in a real
browser (Debian's `chromium`). Standard library only: the DevTools protocol over --remote-debugging-pipe (fd 3
carries commands to the browser, fd 4 its replies and events, each message a JSON text ended by NUL), so no
websocket client is needed.

    chromium --headless --remote-debugging-pipe about:blank
      Target.createTarget / attachToTarget ─► Page, Runtime, Log, Network enabled (and offline emulation)
      Page.navigate(file://PAGE) ─► load event, `wait` s more ─► probe (plotly plots drawn) ─► screenshot ─► close
      console errors / warnings, uncaught exceptions, every request that is not the page itself or a data: URI
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CerebellumError

__all__ = ["BrowserError", "PageCheck", "check_page", "find_chromium"]

_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--disable-breakpad", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "CertificateTransparencyComponentUpdater,AutofillServerCommunication",
    "--password-store=basic", "--use-mock-keychain", "--mute-audio", "--hide-scrollbars",
    "--enable-unsafe-swiftshader",  # software WebGL for plotly's 3-D scenes, without the fallback deprecation warning
    "--remote-debugging-pipe",
)
_OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"  # no name resolves: nothing can leave
_PROBE = ("JSON.stringify({title: document.title, plots: document.querySelectorAll('.js-plotly-plot').length,"
          " svgs: document.querySelectorAll('.main-svg').length, images: document.images.length,"
          " broken_images: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length,"
          " plotly: typeof Plotly !== 'undefined' ? Plotly.version : null})")


class BrowserError(CerebellumError):
    """Chromium is not installed or could not run the check (not a problem of the page)."""


@dataclass(frozen=True)
class PageCheck:
    """What the browser saw of one page."""

    page: str
    browser: str  # e.g. "HeadlessChrome/156.0.8078.114"
    loaded: bool  # the load event fired
    console: tuple[Mapping[str, Any], ...]  # {"type": error|warning|assert|log.error|log.warning, "text": ...}
    exceptions: tuple[str, ...]  # uncaught JavaScript exceptions
    requests: tuple[str, ...]  # every URL requested besides the page itself and data: URIs
    probe: Mapping[str, Any]  # title, plotly plots and SVGs drawn, images (and broken ones), plotly.js version
    seconds: float
    screenshot: str | None = None

    @property
    def errors(self) -> list[Mapping[str, Any]]:
        return [c for c in self.console if c["type"] in ("error", "assert", "log.error")]

    @property
    def clean(self) -> bool:
        """Loaded, with no console error, exception or request (warnings are listed but allowed)."""
        return self.loaded and not (self.errors or self.exceptions or self.requests)

    def problems(self) -> list[str]:
        return ([] if self.loaded else ["the load event never fired"]) + \
            [f"console {c['type']}: {c['text']}" for c in self.errors] + \
            [f"exception: {e}" for e in self.exceptions] + [f"request: {u}" for u in self.requests]


def find_chromium() -> str:
    """The Chromium binary ($CHROMIUM, else chromium / chromium-browser / google-chrome on PATH)."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) if name else None
        if found:
            return found
    raise BrowserError("no Chromium found (apt-get install -y chromium, or set CHROMIUM to its binary)")


class _Pipe:
    """The DevTools protocol over the two pipes: numbered commands, their replies, and the events in between."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.wfd, self.rfd = proc, to_browser, from_browser
        self.buffer = b""
        self.last_id = 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if ready:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed its pipe (exit status {self.proc.poll()})")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: Mapping[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": dict(params or {})}
        if session:
            message["sessionId"] = session
        os.write(self.wfd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise BrowserError(f"Chromium refused {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def collect(self, seconds: float, until=None) -> bool:
        """Gather events for `seconds`, or until `until(event)`; whether `until` was met."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                event = self._message(deadline)
            except TimeoutError:
                return False
            self.events.append(event)
            if until is not None and until(event):
                return True


def _start(binary: str, profile: str, offline: bool, size: tuple[int, int]) -> _Pipe:
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def child_fds():  # in the child: the pipe ends become fds 3 and 4 (first moved above them: dup2 clears CLOEXEC)
        a = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    args = [binary, *_FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}",
            *([_OFFLINE] if offline else []), "about:blank"]
    log = open(os.path.join(profile, "chromium.log"), "wb")
    try:
        # close_fds would close 3 and 4 after child_fds ran; every other fd of ours is close-on-exec
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=child_fds,
                                close_fds=False)
    except OSError as exc:
        raise BrowserError(f"cannot start {binary}: {exc}") from None
    finally:
        log.close()
        os.close(to_r)
        os.close(from_w)
    return _Pipe(proc, to_w, from_r)


def _findings(events: Sequence[dict], page_url: str) -> tuple[list[dict], list[str], list[str]]:
    console, exceptions, requests = [], [], []
    for event in events:
        method, p = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            console.append({"type": p["type"], "text": text})
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            entry = p["entry"]
            console.append({"type": f"log.{entry['level']}", "text": entry.get("text"), "url": entry.get("url")})
        elif method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if url != page_url and not url.startswith("data:"):
                requests.append(url)
    return console, exceptions, requests


def check_page(page: str | os.PathLike, screenshot: str | os.PathLike | None = None, wait: float = 1.0,
               offline: bool = True, binary: str | None = None, size: tuple[int, int] = (1280, 900),
               load_timeout: float = 60.0, full_page: bool = True) -> PageCheck:
    """Open `page` (a local HTML file) in headless Chromium and report what it saw (PageCheck): console errors and
    warnings, uncaught exceptions and every network request, `wait` seconds past the load event; with `offline`
    nothing can leave the machine (names do not resolve, the network is emulated offline: requests are still
    seen). `screenshot`: a PNG of the whole page (`full_page`), or of the window. BrowserError when Chromium
    cannot run the check."""
    started = time.monotonic()
    binary = binary or find_chromium()
    url = Path(page).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="cerebellum-chromium-")
    pipe = _start(binary, profile, offline, size)
    try:
        try:
            version = pipe.send("Browser.getVersion", timeout=60)
        except (TimeoutError, BrowserError) as exc:
            log = Path(profile, "chromium.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise BrowserError(f"{binary} did not start ({exc}): {' | '.join(log)}") from None
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        if offline:
            pipe.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                           "uploadThroughput": -1}, session=session)
        pipe.events.clear()
        pipe.send("Page.navigate", {"url": url}, session=session)
        loaded = pipe.collect(load_timeout, until=lambda e: e.get("method") == "Page.loadEventFired")
        pipe.collect(wait)  # late console messages, timers, requests made after the load
        probe = pipe.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session)
        shot = None
        if screenshot is not None:
            from ..core.atomic import atomic_output

            size_css = pipe.send("Page.getLayoutMetrics", session=session).get("cssContentSize") or {}
            params: dict[str, Any] = {"format": "png"}
            if full_page and size_css:  # the whole page, not only the window
                params.update(captureBeyondViewport=True, clip={
                    "x": 0, "y": 0, "width": size_css["width"], "height": min(size_css["height"], 16384), "scale": 1})
            data = pipe.send("Page.captureScreenshot", params, session=session)["data"]
            with atomic_output(screenshot) as f:
                f.write(base64.b64decode(data))
            shot = str(screenshot)
        console, exceptions, requests = _findings(pipe.events, url)
        try:
            pipe.send("Browser.close", timeout=10)
        except (TimeoutError, BrowserError):
            pass
    finally:
        try:
            pipe.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pipe.proc.kill()
            pipe.proc.wait()
        os.close(pipe.wfd)
        os.close(pipe.rfd)
        shutil.rmtree(profile, ignore_errors=True)
    return PageCheck(page=str(page), browser=str(version.get("product")), loaded=loaded, console=tuple(console),
                     exceptions=tuple(exceptions), requests=tuple(requests),
                     probe=json.loads(probe["result"]["value"]), seconds=time.monotonic() - started,
                     screenshot=shot)
