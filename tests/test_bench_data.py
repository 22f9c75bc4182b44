"""bench data's work is bounded by the image count and the time, never "until" a rate settles."""
import time

from twogpu_alexnet.bench_data import BATCH, PASSES, _rates


def _counting():
    calls = []

    def fn(indices):
        calls.append(len(indices))
        end = time.process_time() + 1e-4  # a little CPU time per batch
        while time.process_time() < end:
            pass
    return fn, calls


def test_each_pipeline_makes_at_most_a_few_passes_over_the_images():
    (a, calls_a), (b, calls_b) = _counting(), _counting()
    count = 3 * BATCH + 4
    rates = _rates({"a": a, "b": b}, count, seconds=1e6)  # time never binds: one warm pass, PASSES measured
    assert calls_a == calls_b == [BATCH, BATCH, BATCH, 4] * (1 + PASSES)
    assert rates["a"] > 0 and rates["b"] > 0


def test_each_pipeline_stops_when_its_time_is_spent():
    (a, calls_a), (b, calls_b) = _counting(), _counting()
    _rates({"a": a, "b": b}, 100 * BATCH, seconds=1e-9)  # the first batch spends it, warm and measured
    assert calls_a == calls_b == [BATCH, BATCH]
