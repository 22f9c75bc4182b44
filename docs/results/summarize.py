"""Collect the specialization experiment's runs into docs/results (see docs/specialization.md).

usage: python3 docs/results/summarize.py CIFAR_TEST_DIR RUN_DIR [RUN_DIR ...]

For each run: the full-test-set error of checkpoints/last.pt (`twogpu-alexnet evaluate`), the colour
statistics and Figure-3 grid of last.pt (`twogpu-alexnet kernels`), the per-epoch colour scores from
metrics.jsonl, and the same statistics of what training changed, W - W_init (the initial weights are
rebuilt from the run's seed exactly as the trainer builds them: seed_everything(seed), build_model).
Writes docs/results/<run>/{kernels.png, kernels.json, scores.png, delta.png, delta.json, epochs.jsonl,
color_score.png}
and adds their rows to docs/results/specialization.json, and prints the markdown tables used in docs/specialization.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cli(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "twogpu_alexnet", *args, "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def learned_change(last: Path, preset: str, seed: int, dest: Path) -> dict:
    """Colour statistics of W - W_init for conv1, and how far each tower's conv1 moved."""
    from twogpu_alexnet import build_model
    from twogpu_alexnet.analysis.kernels import save_kernel_grid, tower_summary
    from twogpu_alexnet.engine.train import seed_everything
    from twogpu_alexnet.model.load import load_weights

    state, meta = load_weights(last)
    seed_everything(seed)
    init = build_model(preset, mode="two-tower", devices=("cpu", "cpu"), num_classes=meta["num_classes"]).state_dict()
    delta = {k: state[k] - init[k] for k in state if k.endswith("conv1.weight")}
    summary = tower_summary(delta)
    summary["relative_change"] = [((delta[k]).norm() / init[k].norm()).item()
                                  for k in ("towers.0.conv1.weight", "towers.1.conv1.weight")]
    summary["init"] = tower_summary(init)["towers"]
    save_kernel_grid(delta, dest / "delta.png")
    (dest / "delta.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def collect(test_dir: str, run: Path) -> dict:
    dest = HERE / run.name
    dest.mkdir(parents=True, exist_ok=True)
    last = run / "checkpoints" / "last.pt"
    config = (run / "config.toml").read_text()
    kernels = cli("kernels", "--checkpoint", str(last), "--out", str(dest))
    test_file = dest / "test.json"  # the slow part: kept, so summarizing again does not repeat it
    if test_file.is_file() and test_file.stat().st_mtime > last.stat().st_mtime:
        test = json.loads(test_file.read_text())
    else:
        test = cli("evaluate", "--checkpoint", str(last), "--data", test_dir, "--device", "cpu", "--workers", "0")
        test_file.write_text(json.dumps(test, indent=1) + "\n")
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if line.strip() and json.loads(line).get("kind") == "epoch"]
    report = cli("report", "--run", str(run), "--out", str(run / "report"))
    if "color_score" in report["plots"]:
        (dest / "color_score.png").write_bytes(Path(report["plots"]["color_score"]).read_bytes())
    (dest / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    (dest / "config.toml").write_text(config)
    for key in ("files", "checkpoint"):
        kernels.pop(key, None)
    (dest / "kernels.json").write_text(json.dumps(kernels, indent=1) + "\n")
    seed = int(next(line.split("=")[1].strip() for line in config.splitlines() if line.strip().startswith("seed")))
    delta = learned_change(last, kernels["preset"], seed, dest)
    return {
        "run": run.name, "preset": kernels["preset"], "seed": seed, "epochs": epochs[-1]["epoch"] if epochs else 0,
        "steps": json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]).get("step"),
        "test_top1_error": test["top1_error"], "test_top5_error": test["top5_error"], "test_images": test["images"],
        "tower0_mean": kernels["towers"][0]["mean"], "tower1_mean": kernels["towers"][1]["mean"],
        "tower0_median": kernels["towers"][0]["median"], "tower1_median": kernels["towers"][1]["median"],
        "p_value": kernels["p_value"], "effect_size": kernels["effect_size"], "cohens_d": kernels["cohens_d"],
        "color_specific_tower": kernels["color_specific_tower"],
        "delta_tower0_mean": delta["towers"][0]["mean"], "delta_tower1_mean": delta["towers"][1]["mean"],
        "delta_p_value": delta["p_value"], "delta_effect_size": delta["effect_size"],
        "delta_color_specific_tower": delta["color_specific_tower"], "conv1_relative_change": delta["relative_change"],
        "init_tower_means": [t["mean"] for t in delta["init"]],
        "score_trajectory": [(e["epoch"], e.get("color_score_tower0"), e.get("color_score_tower1")) for e in epochs],
    }


def table(rows: list[dict]) -> str:
    head = ("| run | preset | seed | epochs | test top-1 err | tower 0 mean / median | tower 1 mean / median "
            "| p | rank-biserial | colour-specific tower |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        tower = "none" if r["color_specific_tower"] is None else str(r["color_specific_tower"])
        lines.append(
            f"| {r['run']} | {r['preset']} | {r['seed']} | {r['epochs']} | {100 * r['test_top1_error']:.1f}% "
            f"| {r['tower0_mean']:.3f} / {r['tower0_median']:.3f} | {r['tower1_mean']:.3f} / {r['tower1_median']:.3f} "
            f"| {r['p_value']:.3g} | {r['effect_size']:+.2f} | {tower} |"
        )
    head2 = ("\n\n| run | conv1 moved (tower 0 / 1) | W - W_init score tower 0 | tower 1 | p | rank-biserial "
             "| colour-specific tower |\n|---|---|---|---|---|---|---|\n")
    lines2 = []
    for r in rows:
        tower = "none" if r["delta_color_specific_tower"] is None else str(r["delta_color_specific_tower"])
        moved = " / ".join(f"{100 * v:.0f}%" for v in r["conv1_relative_change"])
        lines2.append(f"| {r['run']} | {moved} | {r['delta_tower0_mean']:.3f} | {r['delta_tower1_mean']:.3f} "
                      f"| {r['delta_p_value']:.3g} | {r['delta_effect_size']:+.2f} | {tower} |")
    return head + "\n".join(lines) + head2 + "\n".join(lines2)


def main(argv: list[str]) -> int:
    test_dir, runs = argv[0], [Path(r) for r in argv[1:]]
    results = HERE / "specialization.json"  # earlier runs' rows are kept; a run collected again replaces its row
    rows = {r["run"]: r for r in (json.loads(results.read_text()) if results.is_file() else [])}
    rows.update({run.name: collect(test_dir, run) for run in runs})
    rows = list(rows.values())
    results.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
