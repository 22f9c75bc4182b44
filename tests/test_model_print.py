"""print(model) shows the whole network, in both executors, and lists exactly the modules the forward pass runs."""
import pytest
import torch

from twogpu_alexnet import build_model

PAPER_STEPS = ["conv1_pad", "conv1", "conv1_relu", "conv1_lrn", "conv1_pool", "conv2", "conv2_relu", "conv2_lrn",
               "conv2_pool", "conv3", "conv3_relu", "conv4", "conv4_relu", "conv5", "conv5_relu", "conv5_pool",
               "fc6", "fc6_relu", "fc6_dropout", "fc7", "fc7_relu", "fc7_dropout", "fc8"]


def test_grouped_printout_lists_every_step_with_its_constants():
    text = repr(build_model("original", mode="grouped", device="meta"))
    for line in ["preset 'original' on meta: 2 towers in each tensor, tower 0 first",
                 "(conv1_pad): ZeroPad2d((0, 3, 0, 3))",
                 "(conv1_lrn): CrossMapNorm(size=5, alpha=2e-05 (times the plain sum), beta=0.75, k=2, "
                 "within each tower's channels)",
                 "(conv1_pool): MaxPool2d(kernel_size=3, stride=2",
                 "(conv2_samemap): SameMapNormalization(5x5 window, alpha=4e-05 (times the plain sum), beta=0.75, k=1)",
                 "(conv2): Conv2d(96, 256, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=2)",
                 "(fc7_dropout): Dropout(p=0.5, published: training x 0/1 mask (keep 0.5, no rescaling), "
                 "evaluation x 0.5, towers 0, 1, each its own stream)"]:
        assert line in text, line
    names = [line.split(")")[0].strip(" (") for line in text.splitlines() if line.startswith("  (")]
    assert names[:5] == ["conv1_pad", "conv1", "conv1_lrn", "conv1_pool", "conv1_relu"]  # layers-145's order


def test_two_tower_printout_shows_devices_and_crossings():
    text = repr(build_model("paper", mode="two-tower", devices=("meta", "cpu")))
    assert "preset 'paper': tower 0 on meta, tower 1 on cpu; fc8 and the loss on meta" in text
    assert "tower 0 on meta" in text and "tower 1 on cpu" in text
    crossings = [line.strip() for line in text.splitlines() if "CrossTowers" in line]
    assert crossings == [
        f"({layer}_cross): CrossTowers(tower 0 (meta) + tower 1 (cpu) -> {device})"
        for device in ("meta", "cpu") for layer in ("conv3", "fc6", "fc7")] + [
        "(fc8_cross): CrossTowers(tower 0 (meta) + tower 1 (cpu) -> meta)"]


@pytest.mark.parametrize("mode", ["grouped", "two-tower"])
def test_the_forward_pass_runs_the_printed_modules_in_the_printed_order(mode):
    torch.manual_seed(0)
    kwargs = {"device": "cpu"} if mode == "grouped" else {"devices": ("cpu", "cpu")}
    model = build_model("paper", mode=mode, num_classes=10, **kwargs).eval()
    owner = model if mode == "grouped" else model.towers[0]
    ran = []
    for name, module in owner.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    printed = [n for n, _ in owner.named_children()]
    if mode == "grouped":
        assert ran == printed == PAPER_STEPS
    else:  # tower 0's steps; fc8 lives on the model
        assert [n for n in ran if not n.endswith("_cross")] == PAPER_STEPS[:-1]
        assert ran == [n for n in printed if n in ran] and len(ran) == len(printed)
