"""Which line a block is blamed on, from the samples taken while it lasted (in-process)."""

import os
import sysconfig
import threading

from loopguard import BlockEvent, Frame, Sample
from loopguard._decode import _analyse

RUNNER = Frame("/proj/tests/test_upload.py", 12, "test_upload")
PARSE = Frame("/proj/app/forms.py", 40, "parse_form")


def sample(*frames, count=1):
    return Sample(
        offset=0.1, count=count, stack=[RUNNER, *frames], gil="loop", gil_holder_ident=None,
        gil_holder_stack=[], late=False, error=None, task_name=None,
    )  # fmt: skip


def event(samples):
    ev = BlockEvent(
        id=1, duration=0.4, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name=None, captured_after=0.1, starved=False, loop_kind="asyncio", test=None,
        phase=None, start_ns=0, end_ns=400_000_000, samples=samples,
    )  # fmt: skip
    _analyse(ev)
    return ev


def test_the_line_with_most_samples_is_the_site():
    inner = Frame("/proj/app/forms.py", 77, "read_field")
    ev = event(
        [sample(PARSE, inner, count=3), sample(PARSE, Frame(PARSE.filename, 41, "x"), count=2)]
    )
    assert ev.site == inner
    assert ev.sites_changed


def test_without_a_majority_the_innermost_common_function_is_the_site():
    # A long loop in parse_form calls something different each time it is sampled: the site
    # is parse_form (stable from run to run), not whichever callee was sampled most.
    callees = [
        Frame("/proj/app/files.py", 9, "SpooledFile.__init__"),
        Frame("/proj/app/headers.py", 30, "on_headers_finished"),
        Frame("/proj/app/types.py", 450, "UploadFile.content_type"),
    ]
    ev = event([sample(PARSE, c, count=n) for c, n in zip(callees, (2, 1, 1), strict=True)])
    assert ev.site == PARSE
    assert ev.innermost == callees[0]
    assert ev.sites_changed


def test_several_lines_of_one_function_keep_the_most_sampled_line():
    lines = [Frame(RUNNER.filename, n, "test_upload") for n in (20, 21, 22)]
    ev = event([
        Sample(offset=0.1, count=n, stack=[f], gil="loop", gil_holder_ident=None,
               gil_holder_stack=[], late=False, error=None, task_name=None)
        for f, n in zip(lines, (2, 1, 1), strict=True)
    ])  # fmt: skip
    assert ev.site == lines[0]
    assert not ev.sites_changed


# A block in code a greenlet ran (SQLAlchemy's asyncio extension): the loop thread's stack starts
# at the greenlet's entry; the running task's await chain holds the coroutines that awaited it.
PURELIB = sysconfig.get_paths()["purelib"]
SPAWN = Frame(os.path.join(PURELIB, "sqlalchemy/util/concurrency.py"), 203, "greenlet_spawn")
LOAD = Frame("/proj/app/orm.py", 57, "load_items")
CHAIN = [RUNNER, LOAD, SPAWN]


def greenlet_event(*live):
    ev = BlockEvent(
        id=1, duration=0.4, threshold=0.1, thread_name="MainThread", thread_ident=1,
        task_name="Task-3", captured_after=0.1, starved=False, loop_kind="asyncio", test=None,
        phase=None, start_ns=0, end_ns=400_000_000, await_chain=CHAIN,
        samples=[Sample(offset=0.1, count=2, stack=list(live), gil="loop",
                        gil_holder_ident=None, gil_holder_stack=[], late=False, error=None,
                        task_name="Task-3")],
    )  # fmt: skip
    _analyse(ev)
    return ev


def test_a_greenlet_stack_without_project_frames_is_named_at_the_awaiting_line():
    hydrate = Frame(os.path.join(PURELIB, "sqlalchemy/orm/loading.py"), 237, "chunks")
    wait = Frame(threading.__file__, 331, "Condition.wait")
    ev = greenlet_event(hydrate, wait)
    assert ev.site == LOAD  # the innermost project frame of the chain
    assert ev.innermost == wait
    assert ev.stack == [hydrate, wait]


def test_a_project_frame_on_the_greenlet_stack_stays_the_site():
    ev = greenlet_event(PARSE, Frame(threading.__file__, 331, "Condition.wait"))
    assert ev.site == PARSE
