"""The progress helper draws on a terminal only and always yields a working ``advance``."""

from __future__ import annotations

import io

import pytest

from audience_sync import progress


def test_off_a_terminal_nothing_is_drawn(capsys):
    with progress.progress("work", total=3) as advance:
        for _ in range(3):
            advance(1)
    assert list(progress.track([1, 2, 3], "items")) == [1, 2, 3]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_on_a_terminal_a_bar_counts_to_the_total(monkeypatch: pytest.MonkeyPatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with progress.progress("importing", total=4, enabled=True) as advance:
        for _ in range(4):
            advance(1)
    assert "importing" in stream.getvalue()
    assert "4/4" in stream.getvalue()
