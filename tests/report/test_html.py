"""``--loopguard-html`` and ``python -m loopguard html``: one self-contained, readable page.

The structure is checked with ``html.parser`` everywhere; where Chromium is installed the page
is also loaded in headless Chromium (over the DevTools protocol, on a pipe): no console
errors, no network request, and the hotspot rows and timelines are visible.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
from conftest import INI
from loopguard import _native
from test_json_report import SOURCE  # a failing, an allowed, a short and a starved block

LOAD = "(waiting for a CPU)"


class _Page(HTMLParser):
    """The tags of a page, with their attributes and the text inside some of them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags = []  # (tag, attrs dict)
        self.open = []
        self.text = {"th": [], "caption": [], "h2": [], "code": [], "figcaption": []}
        self.rows = []  # (attrs dict, all the text inside) of each <tr>
        self._current = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in self.text:
            self._current = (tag, [])
        if tag == "tr":
            self._row = (dict(attrs), [])
        if tag not in ("meta", "br", "img", "input", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()
        if self._current and self._current[0] == tag:
            self.text[tag].append("".join(self._current[1]).strip())
            self._current = None
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row[0], "".join(self._row[1])))
            self._row = None

    def handle_data(self, data):
        if self._current:
            self._current[1].append(data)
        if self._row is not None:
            self._row[1].append(data)

    def find(self, tag, cls=None):
        return [
            a
            for t, a in self.tags
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


def parse(text):
    page = _Page()
    page.feed(text)
    page.close()
    assert page.open == [], f"unclosed tags: {page.open}"
    return page


@pytest.fixture
def session(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_it=SOURCE)
    (pytester.path / "out").mkdir()
    result = pytester.runpytest_subprocess(
        "-p", "loopguard", "--loopguard-record-threshold=30ms",
        "--loopguard-html=out/report.html", "--loopguard-json=out/report.json",
    )  # fmt: skip
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [f"loopguard: HTML report written to {pytester.path / 'out' / 'report.html'}"]
    )
    return pytester.path / "out"


def test_the_page_shows_hotspots_histogram_gil_and_timelines(session):
    text = (session / "report.html").read_text()
    page = parse(text)
    assert text.startswith("<!DOCTYPE html>")
    assert page.find("html")[0]["lang"] == "en"
    # Self-contained: no stylesheet, script or image from elsewhere.
    assert page.find("link") == [] and page.find("img") == []
    assert all("src" not in a for _, a in page.tags)
    assert "http://" not in text and "https://" not in text
    # The hotspot table: real headers, one row per call site, worst first, with the source.
    assert page.text["h2"] == ["Hotspots", "Block durations", "GIL attribution", "Timelines"]
    assert page.text["th"][:8] == [
        "severity",
        "count",
        "tests",
        "max",
        "total",
        "outcome",
        "call site",
        "blocking operation",
    ]
    assert all(a.get("scope") == "col" for a in page.find("th")[:8])
    rows = [(a, text) for a, text in page.rows if "hotspot" in a.get("class", "").split()]
    assert len(rows) == len(page.find("tr", "hotspot"))
    # The session's three call sites; a loaded machine may add rows of blocks that were its
    # own wait for a CPU (recorded, and labelled so), wherever the loop thread waited.
    ours = [a for a, text in rows if not (LOAD in text and "recorded" in text)]
    assert [a["class"].split()[1] for a in ours] == ["row-MEDIUM", "row-MEDIUM", "row-MONITOR"]
    assert any("time.sleep(0.3)  # failing block" in c for c in page.text["code"])
    assert not any("allowed block" in c for c in page.text["code"])  # not a hotspot
    assert len(page.find("details")) >= 3  # a stack per call site, collapsed
    if _native.portable() is None:
        # The starvation culprit (found by the GIL reader, Linux only) is named with where it
        # was, by its qualified name where the code object has one (CPython 3.11+).
        assert "hog" in page.text["code"]
        assert any(
            "test_it.py" in c and c.rstrip().endswith(("in test_starved.<locals>.hog", "in hog"))
            for c in page.text["code"]
        )
    # A timeline per test with blocks: its phases and its blocks.
    assert sorted(page.text["figcaption"]) == [
        f"test_it.py::test_{name}" for name in ("allowed", "fails", "short", "starved")
    ]
    assert len(page.find("div", "timeline")) == 4
    # A block each, and any that a loaded machine added in the same tests (its wait for a CPU,
    # recorded with that cause, as in the hotspot rows above).
    timelines = {f"test_it.py::test_{n}" for n in ("allowed", "fails", "short", "starved")}
    events = json.loads((session / "report.json").read_text())["events"]
    shown = [e for e in events if e["test"] in timelines]
    load = [e for e in shown if e["cause"] == "cpu-wait" and e["outcome"] == "recorded"]
    assert {e["test"] for e in shown} == timelines and len(shown) - 4 <= len(load)
    assert len(page.find("div", "phase-call")) == 4
    assert len(page.find("div", "block")) == len(shown)
    assert all(a.get("role") == "img" and a.get("aria-label") for a in page.find("div", "timeline"))


def test_the_command_draws_the_same_page_from_the_json_report(session, pytester):
    out = pytester.run(
        sys.executable, "-m", "loopguard", "html", "out/report.json", "-o", "out/cli.html"
    )
    assert out.ret == 0, out.stderr.str()
    assert (session / "cli.html").read_text() == (session / "report.html").read_text()


def test_an_empty_report_is_a_page_too(pytester, inner):
    result = inner.run("def test_nothing():\n    pass\n", "--loopguard-html=r.html", inprocess=True)
    result.assert_outcomes(passed=1)
    page = parse((pytester.path / "r.html").read_text())
    assert page.text["h2"] == ["Hotspots"] and page.find("tr", "hotspot") == []


def test_an_unwritable_html_path_is_a_usage_error(inner):
    result = inner.run(
        "def test_nothing():\n    pass\n", "--loopguard-html=missing/r.html", inprocess=True
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*invalid value for --loopguard-html: '*/missing/r.html' (from the command line); "
            "the directory */missing does not exist"
        ]
    )


# --- headless Chromium -----------------------------------------------------------------------


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, exe, profile):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def wire():  # in the child: its fd 3 reads our commands, its fd 4 writes answers
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, pass_fds=(3, 4),
        )  # fmt: skip
        os.close(cmd_r)
        os.close(out_w)
        self._buffer = b""
        self._next = 0
        self.events = []
        self.session = None

    def send(self, method, params=None, *, session=True, timeout=30.0):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline - time.monotonic()))

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._out_r], [], [], max(left, 0))
            assert ready, "Chromium did not answer"
            chunk = os.read(self._out_r, 1 << 20)
            assert chunk, "Chromium closed the pipe"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self):
        try:
            self.send("Browser.close", session=False, timeout=10)
        except AssertionError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)


_VISIBLE = """
(() => {
  const shown = el => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && el.checkVisibility({visibilityProperty: true});
  };
  const count = sel => [...document.querySelectorAll(sel)].filter(shown).length;
  const stack = document.querySelector("tr.hotspot details pre");
  return {
    rows: count("tr.hotspot"), timelines: count(".timeline"), blocks: count(".timeline .block"),
    phases: count(".timeline .phase"), stackShown: stack ? shown(stack) : null,
    title: document.title,
  };
})()
"""


@pytest.mark.skipif(
    _chromium() is None, reason="Chromium is not installed (Debian: apt-get install chromium)"
)
def test_chromium_renders_the_page_without_errors(session, tmp_path):
    browser = _Browser(_chromium(), tmp_path / "profile")
    try:
        targets = browser.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        browser.session = browser.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable")
        url = (session / "report.html").as_uri()
        browser.send("Page.navigate", {"url": url})
        browser.wait_for("Page.loadEventFired")
        seen = browser.send("Runtime.evaluate", {"expression": _VISIBLE, "returnByValue": True})
        state = seen["result"]["value"]
        shot = browser.send("Page.captureScreenshot", {"format": "png"})
    finally:
        browser.close()
    bad = ("error", "warning")
    errors = [
        e for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in bad)
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in bad)
    ]  # fmt: skip
    assert errors == []
    requests = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requests == [url]
    assert state == {
        "rows": 3, "timelines": 4, "blocks": 4, "phases": 12, "stackShown": False,
        "title": "loopguard report",
    }  # fmt: skip
    assert len(shot["data"]) > 1000


# --- pytest-html -----------------------------------------------------------------------------

RECORDER = """
import json

WORKER = False

def pytest_configure(config):
    global WORKER
    WORKER = hasattr(config, "workerinput")  # under xdist: what reaches the controller counts

def pytest_runtest_logreport(report):
    for extra in [] if WORKER else getattr(report, "extras", []):
        with open("extras.jsonl", "a") as f:
            f.write(json.dumps([report.nodeid, report.when, extra]) + "\\n")
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_pytest_html_gets_the_failing_test_report_as_an_extra(pytester, workers):
    pytest.importorskip("pytest_html")
    pytester.makeini(INI)
    pytester.makeconftest(RECORDER)
    pytester.makepyfile(test_it=SOURCE)
    result = pytester.runpytest_subprocess("-p", "loopguard", "--html=r.html", *workers)
    failed = sorted(line.split()[1] for line in result.stdout.lines if line.startswith("FAILED "))
    assert "test_it.py::test_fails" in failed  # the others may vary on a loaded machine
    extras = [json.loads(x) for x in (pytester.path / "extras.jsonl").read_text().splitlines()]
    assert sorted(test for test, _, _ in extras) == failed
    for _, _, extra in extras:
        assert extra["name"] == "loopguard" and extra["format_type"] == "text"
        assert extra["content"].startswith("loopguard: event loop ")
        assert "Python stack of the loop thread" in extra["content"]
    assert "loopguard" in (pytester.path / "r.html").read_text()
