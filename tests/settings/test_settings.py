"""Unit tests of duration parsing and formatting."""

import pytest
from loopguard._errors import SettingError
from loopguard._parse import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("100ms", 0.1),
        ("0.25s", 0.25),
        ("0.1", 0.1),
        (" 50 ms ", 0.05),
        ("2", 2.0),
        ("1e-1", 0.1),
        ("500us", 0.0005),
        (0.3, 0.3),
        (1, 1.0),
    ],
)
def test_valid_durations_parse_to_seconds(value, seconds):
    assert parse_duration(value, name="x", source="y") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["abc", "-5ms", "0", "0ms", "", "10 min", "nan", "inf", True, None]
)
def test_invalid_durations_name_the_setting_value_and_source(value):
    with pytest.raises(SettingError) as exc:
        parse_duration(value, name="--loopguard-threshold", source="the command line")
    msg = str(exc.value)
    assert "--loopguard-threshold" in msg
    assert repr(value) in msg
    assert "the command line" in msg
    assert "100ms" in msg  # says what is expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.312, "312 ms"), (1.25, "1.25 s"), (0.0004, "0.4 ms"), (12.0, "12.0 s")],
)
def test_durations_format_for_humans(seconds, text):
    assert format_duration(seconds) == text
