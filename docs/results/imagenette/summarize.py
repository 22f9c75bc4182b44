"""Per-epoch colour statistics of the Imagenette runs, from their epoch checkpoints.

    python docs/results/imagenette/summarize.py RUN_DIR... --out docs/results/imagenette

The runs were started before the trainer kept conv1 at step 0, so W0 is rebuilt from each run's
seed the way the trainer builds it (torch.manual_seed(train.seed), then build_model in the run's
mode on the CPU; the data sources draw nothing from torch's generator before that; run it with the
package version the runs were trained with, as the grouped executor's init changed since), written into
checkpoints/last.pt as ``conv1_init`` (atomically) so that `twogpu-alexnet kernels --compare` scores
W - W0, and used here for every epoch checkpoint. Writes epochs.json: one row per run and epoch
(conv1 moved = ||W - W0|| / ||W0|| per tower, the learned part's mean score and colour-specific
kernels per tower, the weights' mean score, both p-values, the effect size and the verdict).
"""
import argparse
import json
import os
from pathlib import Path

import tomllib
import torch

from twogpu_alexnet import build_model
from twogpu_alexnet.analysis.kernels import specialization
from twogpu_alexnet.model.load import load_weights, to_layout


def rebuilt_init(run: Path, meta: dict) -> dict:
    config = tomllib.loads((run / "config.toml").read_text())
    torch.manual_seed(config["train"]["seed"])
    model = build_model(config["model"]["preset"], mode=meta["mode"], num_classes=meta["num_classes"],
                        **({"device": "cpu"} if meta["mode"] == "grouped" else {"devices": ("cpu", "cpu")}))
    conv1 = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith("conv1.weight")}
    return to_layout(conv1, "two-tower")


def keep_init(path: Path, init: dict) -> None:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("conv1_init") is not None:
        assert all(torch.equal(payload["conv1_init"][k], init[k]) for k in init), path
        return
    payload["conv1_init"] = init
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        _, meta = load_weights(run / "checkpoints" / "last.pt")
        init = rebuilt_init(run, meta)
        for path in sorted((run / "checkpoints").glob("epoch_*.pt")):
            state, m = load_weights(path)
            s = specialization(state, init)
            learned, weights = s["learned"]["towers"], s["weights"]["towers"]
            rows.append({"run": run.name, "preset": m["preset"], "epoch": m["epoch"], "step": m["step"],
                         "images": m["step"] * m["config"]["train"]["batch_size"],
                         "moved": [float((state[f"towers.{t}.conv1.weight"] - init[f"towers.{t}.conv1.weight"]).norm()
                                         / init[f"towers.{t}.conv1.weight"].norm()) for t in (0, 1)],
                         "learned_mean": [t["mean"] for t in learned],
                         "learned_above": [t["count_above"] for t in learned],
                         "weights_mean": [t["mean"] for t in weights], "p_value": s["p_value"],
                         "fisher_p_value": s["fisher_p_value"], "effect_size": s["effect_size"],
                         "verdict": s["verdict"]})
            print(json.dumps(rows[-1]))
        keep_init(run / "checkpoints" / "last.pt", init)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "epochs.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
