"""Progress output: rich bars on a terminal, plain periodic lines in logs and pipes."""
import io

from rich.console import Console

from twogpu_alexnet.engine.progress import PlainReporter, RichReporter, reporter_for


def test_not_a_terminal_gives_plain_lines_every_n_steps_and_each_epoch():
    out = io.StringIO()
    reporter = reporter_for(Console(file=out, width=200), every=2)
    assert isinstance(reporter, PlainReporter)
    reporter.start(epochs=3, first_epoch=1, steps_per_epoch=5)
    for batch in range(5):
        reporter.step(1, batch, loss=2.5 - batch / 10, lr=0.01, img_s=100.0)
    reporter.epoch({"epoch": 1, "train_loss": 2.25, "val_top1_error": 0.5, "val_top5_error": 0.125, "lr": 0.01,
                    "time_s": 3.0})
    lines = out.getvalue().splitlines()
    assert lines == [
        "epoch 1/3 step 2/5: loss 2.4000, lr 0.01, 100 images/s",
        "epoch 1/3 step 4/5: loss 2.2000, lr 0.01, 100 images/s",
        "epoch 1/3 step 5/5: loss 2.1000, lr 0.01, 100 images/s",  # the epoch's last step always
        "epoch 1: train loss 2.2500, val top-1 error 50.00%, top-5 12.50%, lr 0.01, 3.0 s",
    ]


def test_a_terminal_gets_the_rich_bars():
    assert isinstance(reporter_for(Console(file=io.StringIO(), force_terminal=True)), RichReporter)


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
