"""A headless Chromium driven through a minimal Chrome DevTools Protocol (CDP) client.

The browser tests share it: start Debian's ``chromium`` with a private profile and
``--remote-debugging-port=0``, connect to the page over a websocket (``websockets``), then
navigate, evaluate JavaScript, click, type and take screenshots. Waiting is always by polling
a condition with a bound (rendering waits, never speed assertions).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"  # screenshots for people to look at; gitignored
SKIP_REASON = "chromium is not installed (apt-get install -y chromium; CI's .ci/run installs it)"

# The page's rendered text; the body is briefly missing while a navigation replaces the document.
BODY_TEXT = "(document.body ? document.body.innerText : '')"

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


class JavaScriptError(AssertionError):
    """An expression evaluated in the page threw."""


class DevTools:
    """A minimal Chrome DevTools Protocol client: navigate, evaluate JavaScript, input, screenshot."""

    def __init__(self, websocket):
        self._ws = websocket
        self._next_id = 0

    async def call(self, method: str, **params) -> dict:
        self._next_id += 1
        await self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:  # events arrive in between; keep the answer to this call
            message = json.loads(await self._ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method} failed: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise JavaScriptError(f"JavaScript failed: {text}\n  in: {expression[:300]}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, seconds: float = 20.0):
        """Poll ``expression`` until it is truthy (a wait for rendering, not a speed assertion).

        A JavaScript error counts as "not yet" (the element may not exist until the page has
        rendered); the last one is reported if the wait runs out.
        """
        deadline = time.monotonic() + seconds
        last_error = None
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
            except JavaScriptError as error:
                value, last_error = None, error
            if value:
                return value
            await asyncio.sleep(0.25)
        try:  # what the page showed instead, so a timeout says why
            shown = await self.text() or ""
            if len(shown) > 2400:  # the head (navigation, tabs) and the tail (where lazily rendered sections land)
                shown = f"{shown[:1200]}\n[... {len(shown) - 2400} characters ...]\n{shown[-1200:]}"
        except JavaScriptError as error:
            shown = f"(page text unreadable: {error})"
        raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}"
                             + (f"; last error: {last_error}" if last_error else "") + f"\npage text:\n{shown}")

    async def set_viewport(self, width: int, height: int) -> None:
        """Render at exactly ``width`` x ``height`` CSS pixels (the window size includes browser chrome)."""
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def text(self) -> str:
        """The page's rendered text (what a reader sees, not the markup)."""
        return await self.evaluate(BODY_TEXT)

    async def insert_text(self, text: str) -> None:
        """Type ``text`` into the focused element, as an input method would."""
        await self.call("Input.insertText", text=text)

    async def press(self, key: str, code: str | None = None, key_code: int = 0, modifiers: int = 0) -> None:
        """Press and release one key (e.g. ``press("Enter", key_code=13)``) on the focused element."""
        common = {"key": key, "code": code or key, "windowsVirtualKeyCode": key_code, "modifiers": modifiers}
        await self.call("Input.dispatchKeyEvent", type="rawKeyDown", **common)
        if key == "Enter":
            await self.call("Input.dispatchKeyEvent", type="char", text="\r", **common)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    async def click_at(self, x: float, y: float) -> None:
        """A real mouse click (press and release) at viewport coordinates."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def click_element(self, js_element: str, what: str, seconds: float = 20.0) -> None:
        """Wait for the element ``js_element`` evaluates to, scroll it into view and click its centre.

        The click waits until the element is what the page shows at that point: a page still
        rendering moves things between measuring and clicking, and a click meant for a button
        then lands on whatever slid under it (on Dagster's asset page, the Metadata section's
        header, which collapses the section and remembers that in the browser's storage).
        """
        box = await self.wait_for(
            f"""(() => {{ const e = {js_element};
                 if (!e) return null;
                 e.scrollIntoView({{block: 'center', inline: 'center'}});
                 const r = e.getBoundingClientRect();
                 if (!(r.width > 0 && r.height > 0)) return null;
                 const x = r.x + r.width / 2, y = r.y + r.height / 2, hit = document.elementFromPoint(x, y);
                 return hit && (hit === e || e.contains(hit)) ? {{x, y}} : null; }})()""",
            what, seconds,
        )
        await self.click_at(box["x"], box["y"])

    async def screenshot(self, path: Path, whole_page: bool = True) -> bytes:
        """Write a PNG of the whole page (or only the viewport) to ``path`` and return its bytes.

        Dagster's virtualized tables (catalog, backfills) paint no rows when the capture reaches
        beyond the viewport; take those with ``whole_page=False``.
        """
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=whole_page)
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data


def devtools_url(profile: Path, browser: subprocess.Popen) -> str:
    """The page target's websocket URL of a Chromium started with --remote-debugging-port=0."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not port_file.exists():
        assert browser.poll() is None, "chromium exited before opening DevTools"
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as reply:
        targets = json.load(reply)
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


def start_chromium(profile: Path, window: tuple[int, int]) -> subprocess.Popen:
    """A headless Chromium on ``about:blank`` with DevTools on a free port (see ``devtools_url``)."""
    return subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         f"--window-size={window[0]},{window[1]}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_chromium(browser: subprocess.Popen) -> None:
    browser.terminate()
    try:
        browser.wait(timeout=10)
    except subprocess.TimeoutExpired:
        browser.kill()
        browser.wait()


@contextlib.asynccontextmanager
async def open_page(profile: Path, browser: subprocess.Popen):
    """A ``DevTools`` client attached to the browser's page."""
    import websockets

    async with websockets.connect(devtools_url(profile, browser), max_size=None) as ws:
        tools = DevTools(ws)
        yield tools
