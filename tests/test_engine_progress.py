"""Progress output: rich bars on a terminal, plain periodic lines in logs and pipes."""
import io

import pytest
from rich.console import Console

from twogpu_alexnet.engine.progress import PlainReporter, RichReporter, reporter_for


def test_not_a_terminal_gives_plain_lines_every_n_steps_and_each_epoch(monkeypatch):
    from twogpu_alexnet.engine import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    reporter = reporter_for(Console(file=out, width=200), every=2)
    assert isinstance(reporter, PlainReporter)
    reporter.start(epochs=3, first_epoch=1, steps_per_epoch=5)
    for batch in range(5):                  # one step a second: the run's 15 steps end at 14 s
        reporter.step(1, batch, loss=2.5 - batch / 10, lr=0.01, img_s=100.0)
        now[0] += 1.0
    reporter.epoch({"epoch": 1, "train_loss": 2.25, "val_top1_error": 0.5, "val_top5_error": 0.125, "lr": 0.01,
                    "time_s": 3.0})
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 1/3 step 2/5: loss 2.4000, lr 0.01, 100 images/s, run ETA 0:00:13",
        "epoch 1/3 step 4/5: loss 2.2000, lr 0.01, 100 images/s, run ETA 0:00:11",
        "epoch 1/3 step 5/5: loss 2.1000, lr 0.01, 100 images/s, run ETA 0:00:10",  # the epoch's last step always
        "epoch 1: train loss 2.2500, val top-1 error 50.00%, top-5 12.50%, lr 0.01, 3.0 s",
    ]


def test_a_terminal_gets_the_rich_bars():
    assert isinstance(reporter_for(Console(file=io.StringIO(), force_terminal=True)), RichReporter)


def test_the_run_bar_counts_steps_so_its_eta_is_known_within_the_first_epoch():
    now = [100.0]
    reporter = RichReporter(Console(file=io.StringIO(), force_terminal=True, width=200))
    reporter.progress.get_time = lambda: now[0]
    reporter.start(epochs=4, first_epoch=2, steps_per_epoch=10)      # a resume: epoch 1 done
    run = reporter.progress.tasks[0]
    assert (run.total, run.completed, run.fields["count"]) == (40, 10, "epoch 1/4")
    reporter.begin_epoch(2, 0)
    for batch in range(3):
        now[0] += 2.0
        reporter.step(2, batch, loss=1.0, lr=0.01, img_s=50.0)
    assert run.completed == 13 and run.speed == pytest.approx(0.5)       # steps per second
    assert run.time_remaining == pytest.approx(27 / 0.5)                  # 27 steps left at 2 s each
    reporter.epoch({"epoch": 2, "train_loss": 1.0, "val_top1_error": 0.5, "val_top5_error": 0.1, "lr": 0.01,
                    "time_s": 6.0})
    assert run.completed == 20 and run.fields["count"] == "epoch 2/4"
    reporter.close()


def test_counter_eta_comes_from_items_done_and_plain_lines_come_each_tenth(monkeypatch):
    from twogpu_alexnet.engine import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    counter = progress.Counter(Console(file=out, width=200), "evaluate")
    counter.start(1000)
    now[0] += 30.0                           # start-up (network, loader processes): not part of the rate
    for done in range(50, 1001, 50):        # then 50 images a second
        counter(done, 1000)
        now[0] += 1.0
    lines = out.getvalue().splitlines()
    assert lines[0] == "evaluate: 50/1,000 images, - img/s, ETA -:--:--"
    assert lines[1] == "evaluate: 100/1,000 images, 50 img/s, ETA 0:00:18"
    assert lines[-1] == "evaluate: 1,000/1,000 images, 50 img/s, ETA 0:00:00"
    assert len(lines) == 11                  # the first call, then one line per tenth
    assert progress.clock(float("nan")) == "-:--:--" and progress.clock(3725) == "1:02:05"


def test_pace_sets_the_log_points_and_averages_images_per_second(monkeypatch):
    from twogpu_alexnet.engine import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    pace = progress.Pace(every=2, steps_per_epoch=5, images_per_step=20)
    assert [pace.due(batch) for batch in range(1, 6)] == [False, True, False, True, True]  # and the epoch's last
    pace.begin_epoch()
    rates = []
    for seconds in (1.0, 1.0, 2.0):  # three steps of 20 images (10 in this process, 2 processes)
        now[0] += seconds
        rates.append(pace.tick(10))
    assert rates == [20.0, 20.0, 0.9 * 20.0 + 0.1 * 10.0]  # moving average for the bar
    assert pace.window_rate(world_size=2) == 60 / 4.0  # step lines: all images since the last log point
    now[0] += 1.0
    assert pace.window_rate(world_size=2) == 0.0


def test_counter_eta_is_not_fooled_by_chunks_that_finish_together(monkeypatch):
    """Work that finishes in bursts (two workers ending two chunks at once, as prepare's did before it counted
    file by file): the rate is files done over the time since the start, so the ETA after the burst is the
    true one, not a few seconds."""
    from twogpu_alexnet.engine import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    counter = progress.Counter(Console(file=io.StringIO(), width=200), "prepare", unit="files")
    counter(0, 9469)                        # the start (prepare reports the files done by earlier runs)
    now[0] = 10.0
    counter(1000, 9469)
    now[0] = 10.01
    rate, left = counter.numbers(2000, 9469)
    assert rate == pytest.approx(2000 / 10.01) and left == pytest.approx(7469 / rate)   # 37 s, the truth at 200/s
