"""bench data's work is bounded by the image count and the time, never "until" a rate settles."""
import time

from twogpu_alexnet.bench_data import BATCH, _rates


def _counting():
    calls = []

    def fn(indices):
        calls.append(len(indices))
        end = time.process_time() + 1e-4  # a little CPU time per batch
        while time.process_time() < end:
            pass
    return fn, calls


def test_each_pipeline_makes_at_most_one_pass_over_the_images():
    (a, calls_a), (b, calls_b) = _counting(), _counting()
    count = 3 * BATCH + 4
    rates = _rates({"a": a, "b": b}, count, seconds=1e6)  # time never binds: one pass each
    assert calls_a[1:] == calls_b[1:] == [BATCH, BATCH, BATCH, 4]  # after one warm-up batch of 8
    assert calls_a[0] == 8 and rates["a"] > 0 and rates["b"] > 0


def test_each_pipeline_stops_when_its_time_is_spent():
    (a, calls_a), (b, calls_b) = _counting(), _counting()
    _rates({"a": a, "b": b}, 100 * BATCH, seconds=1e-9)  # the first timed batch spends it
    assert calls_a[1:] == calls_b[1:] == [BATCH]
