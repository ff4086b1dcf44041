"""`python -m loadtest.soak`: the mix served at a share of its measured peak, each window's processes and requests
recorded, and growth from a baseline window to the end found."""

from __future__ import annotations

import json

from loadtest.soak import MIX, growth, highest, main


def window(minute: int, rss: float, fds: int, threads: int) -> dict:
    return {"minute": minute, "processes": {"7": {"role": "worker", "rss_mb": rss, "fds": fds, "threads": threads}}}


def series(rss: list[float], fds: list[int], threads: list[int]) -> list[dict]:
    return [window(i + 1, *values) for i, values in enumerate(zip(rss, fds, threads))]


def test_growth_is_measured_from_the_baseline_window_to_the_end():
    steady = [window(1, 300, 30, 10), window(2, 200, 30, 13), window(3, 209, 31, 13)]
    assert growth(steady, 2, 0.05, span=1) == []  # 4.5% more memory, one descriptor on 30: within 5%
    grown = [window(1, 200, 30, 13), window(2, 200, 30, 13), window(3, 211, 30, 14)]
    assert growth(grown, 1, 0.05, span=1) == ["worker 7: rss_mb 200 -> 211 (+5.5%)", "worker 7: threads 13 -> 14 (+7.7%)"]
    assert growth([window(1, 200, 30, 13), {"minute": 2, "processes": {}}], 1, 0.05) == ["worker 7 is gone"]


def test_a_thread_that_comes_and_goes_is_no_growth_and_a_leak_is():
    """The hour's worker: threads 13 to 16 all through (a pool), one more in the last window; memory that climbs."""
    pool = series([225.3] * 12, [85] * 12, [16, 14, 15, 15, 14, 14, 13, 14, 14, 13, 14, 15])
    assert growth(pool, 5, 0.05) == []  # medians of 5 windows: 15 at window 5, 14 at the end
    assert growth(pool, 5, 0.05, span=1) == ["worker 7: threads 14 -> 15 (+7.1%)"]  # one window alone
    leak = series([200, 201, 202, 203, 204, 206, 208, 210, 212, 214, 216, 218], [85] * 12, [14] * 12)
    assert growth(leak, 5, 0.05) == ["worker 7: rss_mb 202 -> 214 (+5.9%)"]


def test_a_windows_high_water_mark_is_the_highest_of_its_samples():
    samples = [{"7": {"role": "worker", "rss_mb": 200, "fds": 31, "threads": 13}},
               {"7": {"role": "worker", "rss_mb": 199, "fds": 30, "threads": 14}, "8": {"role": "x", "rss_mb": 5, "fds": 3, "threads": 1}}]
    assert highest(samples) == {"7": {"role": "worker", "rss_mb": 200, "fds": 31, "threads": 14},
                                "8": {"role": "x", "rss_mb": 5, "fds": 3, "threads": 1}}


def test_a_short_soak_answers_every_valid_request_and_refuses_every_bad_one(tmp_path, served_onnx, capsys):
    code = main(["--minutes", "3", "--minute-seconds", "3", "--baseline-minute", "1", "--peak-seconds", "2",
                 "--peak-users", "8", "--growth", "10", "--model", str(served_onnx), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "soak.json").read_text())
    assert code == 0 and report["grew"] == []  # growth allowed 1000%: only errors can fail this run
    windows = report["minutes"]
    assert [w["minute"] for w in windows] == [1, 2, 3]
    sent = sum(w["requests"]["sent"] for w in windows)
    assert abs(sent - report["rate"] * 9) <= 1 and report["rate"] == round(0.7 * report["peak_per_s"], 1)
    bad = sum(w["requests"]["bad"] for w in windows)
    assert abs(bad / sent - MIX["bad"] / sum(MIX.values())) < 0.05
    for w in windows:
        assert w["requests"]["valid_errors"] == w["requests"]["bad_not_4xx"] == w["requests"]["skipped"] == 0
        assert 0 < w["requests"]["p50_ms"] <= w["requests"]["p99_ms"]
        roles = sorted(p["role"] for p in w["processes"].values())
        assert roles == ["bentoml serve", "worker"], roles
        assert all(p["rss_mb"] > 50 and p["fds"] > 3 and p["threads"] >= 1 for p in w["processes"].values())
        assert w["server"]["requests"] > 0 and w["server"]["batch_images"] >= 1  # the batcher's /metrics
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "errors on valid requests 0, bad requests not answered 4xx 0" in out
