"""A block that crosses the threshold only because the loop thread waited for a CPU is recorded,
not failed (--loopguard-cpu-wait)."""

import json

import pytest
from cpu_share import CPU_SHARE_FILES, MARKS, burn, last_cpu, pinned, spinning

pytestmark = MARKS

# The test pins its loop thread to one CPU beside a process that spins on the same CPU, so the
# loop thread gets about half of it: WORK seconds of CPU take about twice as long on the clock.
SOURCE = """
import asyncio, time
import pytest
from cpu_share import burn, last_cpu, pinned, spinning

@pytest.fixture
def shared_cpu():
    cpu = last_cpu()
    with spinning(cpu), pinned(cpu):  # this thread only: the loop's
        yield

@pytest.mark.asyncio
async def test_work(shared_cpu):
    await asyncio.sleep(0)
    t = time.monotonic()
    burn(WORK)
    print(f"WALL {time.monotonic() - t:.3f}")
"""


def measure(inner, work, *args):
    result = inner.run(
        SOURCE.replace("WORK", repr(work)),
        "--loopguard-threshold=100ms",
        "--loopguard-json=r.json",
        "-s",
        *args,
        **CPU_SHARE_FILES,
    )
    text = result.stdout.str()
    wall = float(text.split("WALL ")[1].split()[0]) if "WALL " in text else None
    report = json.loads((inner.pytester.path / "r.json").read_text())
    return result, wall, report


def test_work_under_the_threshold_slowed_by_a_busy_cpu_is_recorded_not_failed(inner):
    result, wall, report = measure(inner, 0.07)
    # 70 ms of CPU took about twice as long: the loop was blocked past the threshold.
    assert wall is not None and wall > 0.12, f"the work took {wall} s: the CPU was not shared"
    result.assert_outcomes(passed=1)
    [ev] = report["events"]
    assert ev["outcome"] == "recorded"
    assert ev["cause"] == "cpu-wait"
    assert ev["reason"].startswith("under the threshold without ")
    assert "of waiting for a CPU (the machine was overloaded" in ev["reason"]
    assert ev["duration_ms"] - ev["cpu_wait_ms"] < 100
    assert ev["cpu_wait_ms"] > 20
    assert report["settings"]["cpu_wait"] == "exclude"
    result.stdout.fnmatch_lines(
        ["MEDIUM * recorded *(waiting for a CPU) while time.thread_time() - t < seconds:"]
    )


def test_work_over_the_threshold_on_a_busy_cpu_still_fails(inner):
    result, wall, report = measure(inner, 0.15)
    assert wall is not None and wall > 0.2, f"the work took {wall} s: the CPU was not shared"
    result.assert_outcomes(failed=1)
    [ev] = report["events"]
    assert ev["outcome"] == "failed"
    assert ev["cpu_wait_ms"] > 20
    assert ev["site"]["function"] == "burn"


def test_cpu_wait_include_judges_the_whole_block(inner):
    result, wall, report = measure(inner, 0.07, "--loopguard-cpu-wait=include")
    assert wall is not None and wall > 0.12, f"the work took {wall} s: the CPU was not shared"
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["loopguard: waiting for a CPU counts toward blocks (from --loopguard-cpu-wait)*"]
    )
    assert report["settings"]["cpu_wait"] == "include"


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (
            ["--loopguard-cpu-wait=never"],
            {},
            "",
            "*invalid value for --loopguard-cpu-wait: 'never' (from the command line); "
            "expected one of exclude, include*",
        ),
        (
            [],
            {"LOOPGUARD_CPU_WAIT": "Include"},
            "",
            "*invalid value for LOOPGUARD_CPU_WAIT: 'Include' (from the environment); "
            "expected one of exclude, include*",
        ),
        (
            [],
            {},
            "loopguard_cpu_wait = sometimes\n",
            "*invalid value for loopguard_cpu_wait: 'sometimes' (from the config file *); "
            "expected one of exclude, include*",
        ),
    ],
)
def test_invalid_cpu_wait_value_is_a_usage_error(inner, monkeypatch, args, env, ini, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = inner.run("def test_x(): pass\n", *args, ini=ini, inprocess=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines([message])


def test_guard_excludes_cpu_wait_unless_asked():
    import asyncio
    import time

    import loopguard

    walls = []

    async def main():
        await asyncio.sleep(0)
        t = time.monotonic()
        burn(0.07)
        walls.append(time.monotonic() - t)

    cpu = last_cpu()
    with spinning(cpu), pinned(cpu):
        with loopguard.guard(threshold="100ms") as g:
            asyncio.run(main())
        assert walls[0] > 0.12, f"the work took {walls[0]} s: the CPU was not shared"
        assert g.events == []
        with pytest.raises(loopguard.LoopBlockedError) as exc:
            with loopguard.guard(threshold="100ms", cpu_wait="include"):
                asyncio.run(main())
        assert exc.value.events[0].cpu_wait > 0.02
    with pytest.raises(ValueError, match="invalid value for cpu_wait: 'never'"):
        loopguard.guard(cpu_wait="never")
