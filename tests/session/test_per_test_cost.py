"""What every test pays for the plugin when nothing blocks: nothing that wakes (or waits for)
the watchdog thread, and no object kept per collected test. (Time is measured by
benchmarks/per_test_cost.py, not asserted here.)"""

import json

import pytest

pytestmark = pytest.mark.single_version

# Records, in the inner session, how often the watchdog thread went to sleep during the
# run-test loop (its voluntary context switches: one per wake-up, whether a timer or a message
# woke it; a test that waited for it woke it first), and how many objects the garbage
# collector tracks after collection and after the run.
PROBE = """
import gc, json, os
import pytest

def _watchdog_sleeps():
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().strip() != "loopguard-watch":
                continue
        with open(f"/proc/self/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    return 0

@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    gc.collect()
    collected = len(gc.get_objects())
    w0 = _watchdog_sleeps()
    try:
        return (yield)
    finally:
        wakeups = _watchdog_sleeps() - w0
        gc.collect()
        with open("probe.json", "w") as f:
            json.dump(
                {"wakeups": wakeups, "collected": collected, "ran": len(gc.get_objects())}, f
            )
"""


def probe(inner, n, *, plugin, kind="sync"):
    if kind == "sync":
        body = "def test_{i}():\n    pass\n"
    else:
        body = "async def test_{i}():\n    pass\n"
    tests = "import pytest\n\n" + "\n".join(body.format(i=i) for i in range(n))
    args = ["--loopguard-threshold=10s"] if plugin else []
    if kind == "async":
        args += ["-o", "asyncio_mode=auto"]
    result = inner.run(None, *args, plugin=plugin, conftest=PROBE, test_many=tests)
    result.assert_outcomes(passed=n)
    return json.loads((inner.pytester.path / "probe.json").read_text())


# The watchdog wakes up on its own at least once per threshold while it watches a loop: with a
# 10 s threshold that is a handful in these sessions, however slow the machine; a message per
# test phase or per loop would be hundreds.


def test_test_phases_without_blocks_do_not_wake_the_watchdog(inner):
    n = 400
    wakeups = probe(inner, n, plugin=True)["wakeups"]
    assert wakeups < n / 4, f"the watchdog woke up {wakeups} times in {n} tests"


def test_async_tests_without_blocks_wake_the_watchdog_a_few_times_per_loop(inner):
    # Each test runs its own event loop, registered with the watchdog and unregistered. The
    # registration wakes the watchdog, without waiting for it: it must know the loop before its
    # first look at a busy stretch (an eighth of the threshold in, for the CPU-wait reading),
    # and it looks at a stretch it saw begin. A wake-up per loop iteration would be thousands.
    n = 300
    wakeups = probe(inner, n, plugin=True, kind="async")["wakeups"]
    assert wakeups <= 5 * n, f"the watchdog woke up {wakeups} times in {n} tests"


@pytest.mark.slow
def test_collected_tests_keep_no_objects_alive(inner):
    # Objects per test, with and without the plugin, from the slope between two suite sizes
    # (what the plugin keeps once, its modules and the watchdog, cancels out).
    def slope(plugin):
        small = probe(inner, 200, plugin=plugin)
        large = probe(inner, 1200, plugin=plugin)
        return {k: (large[k] - small[k]) / 1000 for k in ("collected", "ran")}

    off, on = slope(False), slope(True)
    assert on["collected"] - off["collected"] < 0.1, (off, on)
    assert on["ran"] - off["ran"] < 0.1, (off, on)
