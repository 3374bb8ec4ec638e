"""Inner sessions run in this process (``InnerSession.run(..., inprocess=True)``, used where no
block must be caught) leave the process as they found it: the runtime released, the watchdog
stopped, and no second copy of loopguard's instrumentation."""

import asyncio
import gc
import sys
import threading
import time

from loopguard import _native
from loopguard._imports import PostImportFinder
from loopguard._runtime import runtime

# Raise mode and the lag probe (the loopguard fixture) are on in the session: both must be off
# again after it.
BLOCKS = """
import time
import pytest

@pytest.mark.asyncio
async def test_blocks(loopguard):
    time.sleep(0.4)  # the blocking line
"""


def _instrumentation():
    """What loopguard installs in the process, the first time its runtime is acquired."""
    monitoring = getattr(sys, "monitoring", None)
    return (
        [f for f in sys.meta_path if isinstance(f, PostImportFinder)],
        [cb for cb in gc.callbacks if getattr(cb, "__module__", "").startswith("loopguard")],
        asyncio.base_events.BaseEventLoop.run_forever,
        threading.Thread.start,
        [monitoring.get_tool(i) for i in range(6)] if monitoring is not None else [],
    )


def test_an_inprocess_session_leaves_nothing_behind(inner):
    first = inner.run(BLOCKS, "--loopguard-mode=raise", inprocess=True)
    first.assert_outcomes(failed=1)  # the session's own watchdog caught the block
    first.stdout.fnmatch_lines([inner.site("the blocking line", "test_blocks")])
    installed = _instrumentation()
    assert len(installed[0]) <= 1 and len(installed[1]) <= 1
    assert not runtime.active and not runtime.lag_probing
    assert not _native.is_running()

    second = inner.run(BLOCKS, inprocess=True)
    second.assert_outcomes(failed=1)
    assert _instrumentation() == installed  # nothing installed twice

    # A loop this process runs now is not watched: a block in it is neither caught nor raised.
    async def blocks():
        time.sleep(0.3)

    asyncio.run(blocks())
    runtime.collect()
    assert not runtime.events
