"""CI output: GitHub Actions annotations and JUnit XML properties."""

import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.single_version

SOURCE = """
import asyncio, time
import pytest

def known():
    time.sleep(0.3)  # known site

@pytest.mark.asyncio
@pytest.mark.parametrize("n", [1, 2])
async def test_fails(n):
    time.sleep(0.3)  # failing site

@pytest.mark.asyncio
async def test_known():
    known()

@pytest.mark.asyncio
async def test_short():
    time.sleep(0.045)  # recorded site
"""


@pytest.fixture
def inner(inner, pytester):
    (pytester.path / "b.json").write_text(
        '{"version": 1, "sites": [{"file": "test_it.py", "function": "known"}]}'
    )
    return inner.using(args=("--loopguard-baseline=b.json", "--loopguard-record-threshold=30ms"))


def test_github_annotations_one_per_call_site(inner, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.delenv("GITHUB_WORKSPACE", raising=False)
    result = inner.run(SOURCE)
    result.assert_outcomes(failed=2, passed=2)
    failing, known, short = (
        inner.line("# failing site"),
        inner.line("# known site"),
        inner.line("# recorded site"),
    )
    annotations = [s for s in result.outlines if s.startswith("::")]
    assert len(annotations) == 3, annotations
    result.stdout.fnmatch_lines_random(
        [
            f"::error file=test_it.py,line={failing},title=loopguard%3A event loop blocked "
            "(MEDIUM)::event loop blocked for * (threshold 100 ms) in test_fails (2 times; "
            "failed) in test_it.py::test_fails[[]1[]], test_it.py::test_fails[[]2[]]",
            f"::warning file=test_it.py,line={known},title=loopguard%3A event loop blocked "
            "(MEDIUM)::event loop blocked for * in known (once; baselined) in "
            "test_it.py::test_known",
            f"::warning file=test_it.py,line={short},title=loopguard%3A event loop blocked "
            "(MONITOR)::* (once; recorded) in test_it.py::test_short",
        ]
    )


def test_annotation_paths_are_relative_to_the_workspace(pytester, inner, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path.parent))
    result = inner.run(SOURCE)
    result.stdout.fnmatch_lines([f"::error file={pytester.path.name}/test_it.py,line=*"])


def test_no_annotations_outside_github_actions(inner, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    result = inner.run(SOURCE)
    assert not [s for s in result.outlines if s.startswith("::")]


def test_junit_xml_properties_of_failing_tests(pytester, inner, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    result = inner.run(SOURCE, "--junitxml=junit.xml")
    result.assert_outcomes(failed=2, passed=2)
    root = ET.parse(pytester.path / "junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_fails[1]"].iter("property")}
    assert props["loopguard_site"] == f"test_it.py:{inner.line('# failing site')} in test_fails"
    assert 280 <= int(props["loopguard_duration_ms"]) <= 2000
    assert props["loopguard_blocks"] == "1"
    assert not list(cases["test_known"].iter("property"))
