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
