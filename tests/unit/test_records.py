"""The plugin's value classes (settings, allow patterns, verdicts) behave as the dataclasses
they replace: equal by their fields, printed with them, the frozen ones hashable and
read-only, copies through ``replace``, ``copy`` and ``pickle``."""

import copy
import dataclasses
import pickle
from pathlib import Path

import pytest
from loopguard._judge import Baseline
from loopguard._parse import AllowPattern
from loopguard._settings import Settings, TestSettings


def test_equal_by_fields_and_printed_with_them_in_order():
    a = Settings(threshold=0.1, threshold_source="default", sampler="auto")
    b = Settings(0.1, "default", "auto")
    assert a == b
    b.mode = "warn"
    assert a != b
    assert a != object()
    assert repr(a).startswith("Settings(threshold=0.1, threshold_source='default', sampler=")
    assert "mode='fail'" in repr(a) and "mode='warn'" in repr(b)
    with pytest.raises(TypeError):
        hash(a)  # mutable: unhashable, like a dataclass


def test_a_frozen_value_hashes_by_its_fields_and_refuses_changes():
    p = AllowPattern("app.db:load", "ini", module="app.db", function="load")
    same = AllowPattern(text="app.db:load", source="ini", module="app.db", function="load")
    assert p == same and hash(p) == hash(same) and len({p, same}) == 1
    assert p != AllowPattern("app.db:load", "marker", module="app.db", function="load")
    assert repr(p) == (
        "AllowPattern(text='app.db:load', source='ini', module='app.db', path=None, "
        "function='load')"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.path  # type: ignore[misc]
    assert p.text == "app.db:load"


def test_copies_are_equal_and_replace_changes_only_what_it_names(tmp_path: Path):
    ts = TestSettings(0.1, True, "fail", (AllowPattern("x.py", "ini", path="x.py"),), 0.5)
    for twin in (copy.copy(ts), copy.deepcopy(ts), pickle.loads(pickle.dumps(ts))):
        assert twin == ts and hash(twin) == hash(ts)
    changed = ts.replace(mode="warn")
    assert changed.mode == "warn" and ts.mode == "fail"
    assert changed.replace(mode="fail") == ts
    with pytest.raises(TypeError):
        ts.replace(colour="red")

    b = Baseline(tmp_path / "b.json", frozenset({("app.py", "f")}))
    assert pickle.loads(pickle.dumps(b)) == b
    assert copy.copy(b) == b and copy.copy(b) is not b
