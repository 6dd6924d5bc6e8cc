"""The browser control surface in headless Chromium, against a real streaming session on the tiny model
(null device, real time on the engine's clock), over real HTTP and WebSocket on 127.0.0.1.

The page's controls are moved with pointer actions as a performer's finger would; what they change is
found in the take's session log at the step the engine applied it. OSC changes arrive over a real UDP
socket. Set MUSICSTEER_SCREENSHOTS=docs to keep the screenshots README shows (web-surface.png and
web-surface-phone.png).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
import websockets
from conftest import chromium, random_vectors
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from test_osc import Client, until

from musicsteer.controllers.mappings import Preset
from musicsteer.controllers.osc import OscServer
from musicsteer.controllers.presets import PresetBank
from musicsteer.controllers.web import WebSurface
from musicsteer.engine.control import Controls
from musicsteer.engine.events import Applied, Change
from musicsteer.engine.generator import Generator
from musicsteer.engine.session import StreamingSession, StreamOptions
from musicsteer.engine.session_log import log_path_for, read_log

LAYER = 1
LABELS = ("rock", "jazz", "classical", "electronic")


class Served:
    def __init__(self, session: StreamingSession, web: WebSurface, osc: OscServer, folder: Path) -> None:
        self.session, self.web, self.osc, self.folder = session, web, osc, folder
        self.applied: list[tuple[int, Change]] = []
        session.listeners.add(lambda e: isinstance(e, Applied) and self.applied.extend((e.step, c) for c in e.changes))

    @property
    def values(self):
        return self.session.control.values

    def refused(self, kind: str) -> int:
        return self.session.control.counts.get(kind, 0)


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    gen = Generator(tiny, Controls(prompt="rock", mix={"rock": 1.0}, alpha=0.2),
                    random_vectors(tiny, LABELS, best_layer=LAYER))
    (folder / "takes").mkdir()
    session = StreamingSession(gen, StreamOptions(output_device="null", record_dir=folder / "takes"))
    bank = PresetBank(session.control, {"calm": Preset("calm", {"jazz": 1.0}, 0.1)}, folder / "presets.yaml")
    web = WebSurface(session, "127.0.0.1", 0, presets=bank)
    osc = OscServer(session, port=0, presets=bank)
    runner = threading.Thread(target=session.run, daemon=True)
    runner.start()
    web.start()
    osc.start()
    until(lambda: session.step > 10, what="the session to start generating")
    yield Served(session, web, osc, folder)
    osc.stop()
    web.stop()
    session.stop()
    runner.join(timeout=30)
    assert session.error is None and session.listeners.errors == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("profile"))
    yield driver
    driver.quit()


def open_page(driver, url: str) -> None:
    driver.get(url)
    until(lambda: driver.find_element(By.ID, "connection").text == "connected", what="the page to connect")
    until(lambda: driver.find_elements(By.ID, "param-alpha"), what="the controls drawn from the table")


def page_value(driver, param: str) -> str:
    return driver.find_element(By.ID, f"param-{param}").get_property("value")


def drag(driver, element, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at `start`, move in steps to `end`, release: fractions of the element's size from its centre."""
    w, h = element.size["width"], element.size["height"]
    actions = ActionChains(driver, duration=20)
    actions.move_to_element_with_offset(element, int(start[0] * w), int(start[1] * h)).click_and_hold()
    for i in range(1, 6):
        t = i / 5
        actions.move_to_element_with_offset(element, int((start[0] + t * (end[0] - start[0])) * w),
                                            int((start[1] + t * (end[1] - start[1])) * h))
    actions.release().perform()


def test_the_slider_and_the_pad_reach_the_session_log_at_their_steps(served: Served, browser) -> None:
    take = served.session.start_recording("from-the-page.wav", live=True)
    open_page(browser, served.web.url)
    drag(browser, browser.find_element(By.ID, "param-alpha"), (-0.3, 0), (0.3, 0))  # from 0.2 to 0.8 of its span
    alpha = float(page_value(browser, "alpha"))
    assert 0.7 < alpha < 0.9
    until(lambda: served.values.alpha == pytest.approx(alpha), what="the slider's alpha applied")
    pad = browser.find_element(By.ID, "pad")
    drag(browser, pad, (0, 0), (0.45, -0.45))  # the centre (an even mix) to the top-right corner: jazz
    until(lambda: served.values.mix.get("jazz", 0) > 0.8, what="the pad's mix applied")
    served.session.stop_recording()
    logged = read_log(log_path_for(take)).changes
    from_page = [(step, c) for step, c in served.applied if c.param in ("alpha", "mix") and c.arrived]
    assert any(c.param == "alpha" for _, c in from_page) and any(c.param == "mix" for _, c in from_page)
    for step, change in from_page:  # each at the step the engine applied it
        assert (step, change.param, change.value) in [(s, c.param, c.value) for s, c in logged]
    mixes = [c.value for _, c in from_page if c.param == "mix"]
    assert len(mixes) >= 2 and mixes[-1]["jazz"] > 0.8 and all(len(m) <= 4 for m in mixes)


def test_an_osc_change_moves_the_page_and_two_pages_stay_in_sync(served: Served, browser) -> None:
    open_page(browser, served.web.url)
    first = browser.current_window_handle
    browser.switch_to.new_window("window")
    open_page(browser, served.web.url)
    second = browser.current_window_handle
    client = Client(served.osc.address)
    client.send("/musicsteer/alpha", 0.375)  # OSC f is float32: values it holds exactly
    client.send("/musicsteer/guidance", 4.5)
    for handle in (second, first):
        browser.switch_to.window(handle)
        until(lambda: page_value(browser, "alpha") == "0.375", what="the page's alpha slider to follow OSC")
        until(lambda: page_value(browser, "guidance") == "4.5", what="the page's guidance to follow OSC")
    drag(browser, browser.find_element(By.ID, "param-temperature"), (-0.45, 0), (-0.25, 0))  # page 1 moves it
    wanted = float(page_value(browser, "temperature"))  # where the finger lifted: the last value sent
    until(lambda: served.values.temperature == pytest.approx(wanted), what="page 1's temperature applied")
    browser.switch_to.window(second)
    until(lambda: float(page_value(browser, "temperature")) == pytest.approx(wanted), what="page 2 to follow page 1")
    served.session.control.submit(Change("mix", {"classical": 1.0}))  # as MIDI, a preset or automation submit
    until(lambda: "active" in browser.find_element(By.ID, "vector-classical").get_attribute("class"),
          what="page 2's vector button to light")
    browser.close()
    browser.switch_to.window(first)
    client.close()


def test_presets_and_recording_from_the_page(served: Served, browser) -> None:
    open_page(browser, served.web.url)
    browser.find_element(By.ID, "vector-electronic").click()
    until(lambda: served.values.mix.get("electronic", 0) > 0.99, what="the vector button's morph", timeout=15)
    browser.find_element(By.ID, "preset-name").send_keys("bright")
    browser.find_element(By.ID, "preset-save").click()
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#presets button[data-name='bright']"), what="saved")
    presets = served.folder / "presets.yaml"
    until(lambda: presets.exists() and "bright" in presets.read_text(), what="the preset written")
    browser.find_element(By.CSS_SELECTOR, "#presets button[data-name='calm']").click()
    until(lambda: served.values.mix == {"jazz": 1.0}, what="the preset recalled")
    browser.find_element(By.ID, "record").click()
    until(lambda: served.session.status()["recording"], what="a take started from the page")
    path = Path(served.session.status()["recording"])
    assert path.parent == served.folder / "takes"  # the confined recordings folder, as OSC's takes
    until(lambda: browser.find_element(By.ID, "record-time").text not in ("–", "0:00"), what="elapsed", timeout=15)
    browser.find_element(By.ID, "record").click()
    until(lambda: not served.session.status()["recording"], what="the take stopped")
    audio, rate = sf.read(path)
    assert rate == served.session.sample_rate and len(audio) >= rate  # the page counted a second
    level = browser.find_element(By.ID, "level").text
    assert level.startswith("RMS ") and "dBFS" in level


def test_a_thousand_malformed_messages_are_counted_and_refused_while_the_take_records(served: Served) -> None:
    take = served.session.start_recording("under-attack.wav", live=True)
    before = {kind: served.refused(kind) for kind in ("malformed", "bad_type", "unknown_name", "non_finite")}

    async def attack() -> list[dict]:
        async with websockets.connect(f"ws://127.0.0.1:{served.web.address[1]}/ws") as ws:
            bad = ["", "{", "[]", "null", '{"type": 5}', "9" * 5000, "[" * 20000, '{"type": "set", "value": NaN}']
            for i in range(1000):  # paced under the page's rate limit, so every one is read and answered
                await ws.send(bad[i % len(bad)])
                if i % 50 == 49:
                    await asyncio.sleep(0.15)
            await ws.send(json.dumps({"type": "set", "param": "alpha", "value": "loud"}))
            await ws.send(json.dumps({"type": "set", "param": "nope", "value": 1}))
            await ws.send(json.dumps({"type": "set", "param": "alpha", "value": 1e999}))  # Infinity in JSON text
            await ws.send(b"\x00\x01binary")  # the protocol is text: refused, the page stays connected
            await ws.send(json.dumps({"type": "save", "name": "two\nlines"}))  # a name is one line
            replies = []
            while sum(r["type"] == "error" for r in replies) < 1005:
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return replies

    seconds = served.session.recordings.current.seconds
    replies = asyncio.run(attack())
    assert sum(r["type"] == "error" for r in replies) == 1005  # one answer each
    # {"type": 5} is 1 in 8 of the thousand: an unknown message type; the rest do not parse, nor do
    # Infinity and the binary frame
    assert served.refused("malformed") - before["malformed"] == 875 + 2
    assert served.refused("unknown_name") - before["unknown_name"] == 125 + 1
    assert served.refused("bad_type") - before["bad_type"] == 2
    until(lambda: served.session.recordings.current.seconds > seconds + 1, what="the take to go on recording")
    served.session.stop_recording()
    assert sf.info(take).frames > 0 and served.session.error is None


def test_a_wrong_token_and_a_foreign_origin_are_refused(served: Served, browser, tmp_path) -> None:
    web = WebSurface(served.session, "0.0.0.0", 0)  # beyond loopback: a token, whatever the sender's address
    web.start()
    try:
        port, token = web.address[1], web.token
        assert token and web.url.endswith(f"?token={token}")
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/?token=wrong", "/static/app.js", f"/static/app.js?token={token[:-1]}"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + path, timeout=5)
            assert info.value.code == 403
        assert urllib.request.urlopen(f"{base}/static/app.js?token={token}", timeout=5).status == 200

        async def handshake(query: str, origin: str | None) -> str:
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws{query}", origin=origin) as ws:
                    return json.loads(await ws.recv())["type"]
            except websockets.InvalidStatus as exc:
                return str(exc.response.status_code)

        assert asyncio.run(handshake("?token=wrong", None)) == "403"
        assert asyncio.run(handshake(f"?token={token}", "http://evil.example")) == "403"
        assert asyncio.run(handshake(f"?token={token}", f"http://127.0.0.1:{port}")) == "hello"
        open_page(browser, f"{base}/?token={token}")  # the token becomes a cookie; the page connects with it
        assert browser.current_url == f"{base}/"
        # A page from another origin, open in the same browser (it has the cookie), tries to drive the session.
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "index.html").write_text(f"""<script>
            const ws = new WebSocket("ws://127.0.0.1:{port}/ws");
            ws.onopen = () => {{
              ws.send(JSON.stringify({{type: "set", param: "alpha", value: 9}})); document.title = "open"; }};
            ws.onclose = () => {{ if (document.title !== "open") document.title = "refused"; }};
            </script>""")
        refused = served.refused("refused_origin")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: http.server.SimpleHTTPRequestHandler(
            *a, directory=str(foreign)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            until(lambda: browser.title in ("open", "refused"), what="the foreign page's attempt")
            assert browser.title == "refused" and served.refused("refused_origin") == refused + 1
            assert served.values.alpha != 9
        finally:
            server.shutdown()
    finally:
        web.stop()
    loopback = f"http://127.0.0.1:{served.web.address[1]}/"  # loopback: no token, but a rebound Host is refused
    request = urllib.request.Request(loopback, headers={"Host": f"evil.example:{served.web.address[1]}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 400


def test_the_page_fits_a_phone_and_a_screenshot_is_made(served: Served, browser, tmp_path) -> None:
    keep = os.environ.get("MUSICSTEER_SCREENSHOTS")
    try:
        for width in (320, 390):  # an iPhone SE's and an iPhone 12's viewport
            browser.set_window_size(width, 844)
            open_page(browser, served.web.url)
            overflow = browser.execute_script("""return Math.max(document.documentElement.scrollWidth,
                ...[...document.querySelectorAll('.control > *')].map(e => e.getBoundingClientRect().right))
                - document.documentElement.clientWidth""")  # (innerWidth counts a scrollbar in)
            assert overflow <= 0, f"the page is {overflow} px wider than a {width} px phone"
        pad = browser.find_element(By.ID, "pad")
        assert pad.size["width"] >= 300 and browser.find_element(By.ID, "record").size["height"] >= 44
        until(lambda: browser.find_element(By.ID, "level").text.startswith("RMS"), what="the level view")
        if keep:
            browser.save_screenshot(str(Path(keep) / "web-surface-phone.png"))
    finally:
        browser.set_window_size(1200, 1000)
    open_page(browser, served.web.url)
    until(lambda: browser.find_element(By.ID, "level").text.startswith("RMS"), what="the level view")
    shot = tmp_path / "web-surface.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if keep:
        shutil.copy(shot, Path(keep) / "web-surface.png")


def test_play_web_beyond_loopback_prints_a_url_with_its_token(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "musicsteer", "play", "--model", "tiny", "--output-device", "null",
                             "--seconds", "60", "--no-osc", "--no-status", "--web", "0.0.0.0:0"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = ""
        end = time.monotonic() + 120
        while "control surface:" not in line and time.monotonic() < end:
            line = proc.stderr.readline()
        assert "?token=" in line, line
        port, token = line.split(":")[-1].split("/")[0], line.strip().split("?token=")[1]
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the token's cookie
        page = browser.open(f"http://127.0.0.1:{port}/?token={token}", timeout=5)
        assert page.status == 200 and page.url == f"http://127.0.0.1:{port}/" and b"app.js" in page.read()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130) and "Traceback" not in err
