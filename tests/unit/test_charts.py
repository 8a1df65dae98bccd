"""The dashboard's server-drawn SVG charts. Pure."""

from __future__ import annotations

import pytest

from audience_sync.admin import charts


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (3, "3"),
        (2.5, "2.5"),
        (999, "999"),
        (1000, "1k"),
        (12_345, "12.3k"),
        (2_000_000, "2M"),
        (3_500_000_000, "3.5G"),
    ],
    ids=["zero", "small", "fraction", "hundreds", "1k", "12k", "2M", "3.5G"],
)
def test_human_numbers(n, text):
    assert charts.human(n) == text


@pytest.mark.parametrize(
    ("peak", "axis"),
    [(0, 1), (1, 1), (3, 5), (7, 10), (60, 100), (180, 200), (320, 500), (1001, 2000)],
    ids=["0", "1", "3", "7", "60", "180", "320", "1001"],
)
def test_axis_top_is_a_round_number_at_or_above_the_peak(peak, axis):
    assert charts._nice_max(peak) == axis


def test_labels_are_escaped_and_bars_scaled():
    svg = charts.bars([1, 4], ["<script>x</script>", "b&c"], title='"quoted"')
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg and "b&amp;c" in svg
    assert svg.count("<rect") == 2
    assert 'height="0.0"' not in svg  # both values drawn


def test_an_all_zero_chart_says_so():
    svg = charts.bars([0, 0, 0], ["a", "b", "c"], empty="nothing pending")
    assert "nothing pending" in svg


def test_labels_count_back_from_the_newest():
    svg = charts.bars([1] * 14, [f"d{i}" for i in range(14)], label_every=3)
    assert ">d13<" in svg and ">d10<" in svg and ">d12<" not in svg


def test_horizontal_bars_and_their_empty_state():
    svg = charts.hbars([("bad_request", 10), ("<x>", 5)])
    assert "bad_request" in svg and "&lt;x&gt;" in svg and svg.count("<rect") == 2
    assert "no failures" in charts.hbars([], empty="no failures")
