"""The Figure-3 study under the protocol of docs/specialization.md (run by launch/specialization.sh).

10 two-tower runs (seeds 0-9) and 5 one-tower controls (seeds 0-4), each exactly STEPS SGD steps
(EPOCHS epochs of STEPS / EPOCHS steps: train.max_steps_per_epoch), PARALLEL at a time. A run folder
that already holds a checkpoint is continued (--resume) up to the same step count; a finished one is
left alone. conv1 of every epoch checkpoint is copied to OUT/conv1/<run>/epoch_NNN.pt (conv1 of both
towers, W0, step and epoch: small), so the per-epoch kernels outlive the trainer's pruning. At the end:
OUT/compare.json (`kernels --compare --json`), OUT/compare.txt (the table), OUT/scores.json (per run and
epoch: per-kernel scores of W and L, r, p, the verdict) and OUT/summary.md.

Settings come from the environment (launch/specialization.sh sets them): OUT, DATA (train/ and val/),
DRY (1: the CPU rehearsal), STEPS, EPOCHS, PARALLEL, TOWERS, CONTROL, BATCH, plus the trainer's
--set options in SETTINGS (one per line).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNS = 10
CONTROLS = 5


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def plan() -> list[tuple[str, str, int]]:
    towers, control = env("TOWERS", "paper"), env("CONTROL", "paper-onetower")
    return ([(f"{towers}-s{s}", towers, s) for s in range(RUNS)]
            + [(f"{control}-s{s}", control, s) for s in range(CONTROLS)])


def run_state(run: Path) -> tuple[int, int] | None:
    """(epoch, batch) of the checkpoint ``train --resume`` would continue from (last.pt, or the newest
    readable epoch file when last.pt is damaged), or None when the run has written no checkpoint yet.
    Checkpoints that exist but none of which can be read stop the study (UserError): a run is never
    deleted for a file the user may want to look at."""
    from twogpu_alexnet.engine.checkpoint import load_latest
    from twogpu_alexnet.errors import UserError

    if not any((run / "checkpoints").glob("*.pt")):  # no checkpoint written yet (temporary files end .tmp)
        return None
    try:
        payload, path, notes = load_latest(run)  # the trainer's own choice, through the one checkpoint reader
    except UserError as exc:
        why = exc.args[0].removesuffix("; start a new run instead")
        raise UserError(f"{why}; the study does not delete a run with checkpoints: move {run} away (the run then "
                        "starts over) and run the study again") from None
    for note in notes:
        print(f"{run.name}: {note}; going on from {path.name}", file=sys.stderr, flush=True)
    return int(payload["epoch"]), int(payload["batch"])


def train_args(run: Path, preset: str, seed: int, epochs: int, steps_per_epoch: int, settings: list[str],
               config: Path | None) -> list[str] | None:
    """The `train` arguments that bring ``run`` to ``epochs`` epochs, or None when it is there."""
    state = run_state(run)
    if state is not None and state[0] >= epochs:
        return None
    if state is not None:
        return ["train", "--resume", str(run), "--set", f"train.epochs={epochs}"]
    if run.exists():
        shutil.rmtree(run)  # a run that died before its first checkpoint starts over
    args = ["train", "--out", str(run)] + (["--config", str(config)] if config else [])
    sets = [f'model.preset="{preset}"', f"train.seed={seed}", f"train.epochs={epochs}",
            f"train.max_steps_per_epoch={steps_per_epoch}", 'schedule.kind="none"', f"checkpoint.keep_last={epochs}",
            "analysis.kernel_grid_epochs=[]", *settings]
    for s in sets:
        args += ["--set", s]
    return args


def save_conv1(run: Path, out: Path) -> int:
    """Copy conv1 (and W0, step, epoch) of each epoch checkpoint of ``run`` not yet copied; returns the count."""
    import torch

    from twogpu_alexnet import files
    from twogpu_alexnet.errors import UserError
    from twogpu_alexnet.model.load import read_file

    folder = out / "conv1" / run.name
    copied = 0
    for path in sorted((run / "checkpoints").glob("epoch_*.pt")):
        target = folder / path.name
        if target.exists():
            continue
        try:
            payload = read_file(path, mmap=True)  # the one checkpoint reader; tensors mapped, not read
            conv1 = {k: v.clone() for k, v in payload["model"].items() if k.endswith("conv1.weight")}
            saved = {"conv1": conv1, "conv1_init": payload.get("conv1_init"), "step": int(payload["step"]),
                     "epoch": int(payload["epoch"]), "preset": payload.get("preset")}
        except (UserError, KeyError, TypeError, AttributeError):  # being written, pruned or damaged: next poll
            continue
        files.make_folder(folder, "conv1 copies")
        files.write_atomic(target, lambda f, saved=saved: torch.save(saved, f), what=f"conv1 copy {target}")
        copied += 1
    return copied


def run_all(out: Path, jobs: list[tuple[Path, list[str]]], parallel: int, log: Path) -> list[str]:
    """Train every job, ``parallel`` at a time: in this process when parallel is 1, else as processes.
    Returns the names of the runs that failed."""
    failed = []
    if parallel <= 1:
        from twogpu_alexnet.cli import main

        for run, args in jobs:
            print(f"train {run.name}", file=sys.stderr, flush=True)
            with open(log / f"{run.name}.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                code = main(args + ["--json"])
            save_conv1(run, out)
            if code != 0:
                failed.append(run.name)
        return failed
    waiting, running = list(jobs), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            run, args = waiting.pop(0)
            print(f"train {run.name}", file=sys.stderr, flush=True)
            f = open(log / f"{run.name}.log", "a")  # noqa: SIM115 (the run's output while it runs; closed when it ends)
            running[run] = (subprocess.Popen([sys.executable, "-m", "twogpu_alexnet", *args], stdout=f,
                                             stderr=subprocess.STDOUT), f)
        time.sleep(1.0)
        for run, (proc, f) in list(running.items()):
            save_conv1(run, out)
            if proc.poll() is not None:
                f.close()
                save_conv1(run, out)
                if proc.returncode != 0:
                    failed.append(run.name)
                del running[run]
    return failed


def epoch_scores(out: Path, runs: list[Path]) -> list[dict]:
    """Per run and saved epoch: the per-kernel scores of W and L and the per-run statistics (for scores.json)."""
    import tomllib

    from twogpu_alexnet.analysis.kernels import run_specialization
    from twogpu_alexnet.model.load import read_file

    rows = []
    for run in runs:
        config = tomllib.loads((run / "config.toml").read_text()) if (run / "config.toml").is_file() else {}
        for path in sorted((out / "conv1" / run.name).glob("epoch_*.pt")):
            saved = read_file(path)
            s = run_specialization(saved["conv1"], saved["conv1_init"], run_dir=run, step=saved["step"],
                                   meta={"config": config})
            rows.append({"run": run.name, "epoch": saved["epoch"], "step": saved["step"],
                         "init_scale": s["init_scale"], "split": s["split"], "effect_size": s["effect_size"],
                         "p_value": s["p_value"], "verdict": s["verdict"], "learned_scores": s["scores"],
                         "weights_scores": s["weights"]["scores"], "low_frequency_scores": s["low_frequency_scores"],
                         "moved": s["moved"]})
    return rows


def measured_rate(run: Path) -> float | None:
    """Training images/s of the run's epochs (metrics.jsonl epoch lines' img_s, averaged)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "epoch" and isinstance(r.get("img_s"), (int, float)):
            rates.append(r["img_s"])
    return sum(rates) / len(rates) if rates else None


def summary_md(out: Path, result: dict, table: str, info: dict) -> str:
    a = result["across"]
    lines = [
        "# Figure-3 study: summary", "",
        f"- protocol: docs/specialization.md; {a['two_tower_runs']} two-tower runs, {a['control_runs']} controls, "
        f"{info['steps']} steps each ({info['epochs']} epoch(s) of {info['steps_per_epoch']} steps, batch "
        f"{info['batch']})",
        f"- data: {info['data']}; presets {info['towers']} / {info['control']}; device {info['device']}; "
        f"{info['parallel']} run(s) at a time",
        f"- wall time {info['wall_s']:.0f} s; training images/s per run (mean of epochs): "
        f"{info['img_s'] if info['img_s'] is None else round(info['img_s'])}",
        f"- torch {info['torch']}, python {info['python']}, commit {info['commit']}",
        "- every trainer setting: the run folders' config.toml; per-epoch conv1: conv1/<run>/epoch_NNN.pt; "
        "per-kernel scores of W and L at every saved epoch: scores.json", "",
        "```", table.rstrip(), "```", "",
        f"**Conclusion:** {result['conclusion']}", "",
    ]
    return "\n".join(lines)


def whole(name: str, default: str) -> int:
    """The environment setting ``name`` as a whole number >= 1; UserError otherwise."""
    from twogpu_alexnet.errors import UserError

    text = env(name, default)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{name}={text!r} is not a whole number of at least 1; set {name} to one (e.g. {default})")
    return value


def write(path: Path, text: str) -> None:
    """An OUT file, written whole or not at all (a full disk is one sentence; a link there is refused)."""
    from twogpu_alexnet import files

    files.write_atomic(path, text, then="run launch/specialization.sh again (finished runs are kept)")


def main() -> int:
    """The study; a user mistake or a damaged file is one sentence and exit 2."""
    from twogpu_alexnet.errors import UserError

    try:
        return study()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def study() -> int:
    from twogpu_alexnet import files
    from twogpu_alexnet.errors import UserError

    here = Path(__file__).resolve().parents[1]
    if not os.environ.get("OUT"):
        raise UserError("OUT is not set; set OUT to the folder the study writes to (launch/specialization.sh does)")
    out = Path(os.environ["OUT"]).resolve()
    steps, epochs = whole("STEPS", "800"), whole("EPOCHS", "16")
    if steps % epochs:
        raise UserError(f"STEPS={steps} is not a multiple of EPOCHS={epochs}; choose STEPS = EPOCHS x steps per epoch")
    settings = [s for s in env("SETTINGS", "").splitlines() if s.strip()]
    parallel = whole("PARALLEL", "5")
    config = Path(os.environ["CONFIG"]) if os.environ.get("CONFIG") else None
    files.make_folder(out / "runs", "the study's runs")
    files.make_folder(out / "logs", "the study's logs")
    started = time.perf_counter()
    jobs, names = [], []
    for name, preset, seed in plan():
        run = out / "runs" / name
        names.append(run)
        args = train_args(run, preset, seed, epochs, steps // epochs, settings, config)
        if args is not None:
            jobs.append((run, args))
    print(f"{len(jobs)} of {len(names)} runs to train or continue ({steps} steps each)", file=sys.stderr, flush=True)
    failed = run_all(out, jobs, parallel, out / "logs")
    from rich.console import Console

    from twogpu_alexnet.analysis.compare import compare_runs
    from twogpu_alexnet.cli.kernels import compare_lines, compare_table

    try:
        result = compare_runs(names)  # the protocol's defaults: what `kernels --compare --json` prints
    except UserError as exc:
        print(f"error: {exc} (logs in {out / 'logs'})", file=sys.stderr)
        return 1
    write(out / "compare.json", json.dumps(result) + "\n")
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(compare_table(result))
    for line in compare_lines(result):
        console.print(line, soft_wrap=True, markup=False)
    table = console.file.getvalue()
    write(out / "compare.txt", table)
    write(out / "scores.json", json.dumps(epoch_scores(out, names)) + "\n")
    import torch

    rates = [r for r in (measured_rate(run) for run in names) if r]
    commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    info = {"steps": steps, "epochs": epochs, "steps_per_epoch": steps // epochs, "batch": env("BATCH", "128"),
            "data": os.environ.get("DATA", "?"), "towers": env("TOWERS", "paper"),
            "control": env("CONTROL", "paper-onetower"), "device": device, "parallel": parallel,
            "wall_s": time.perf_counter() - started, "img_s": sum(rates) / len(rates) if rates else None,
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit.strip() or "unknown"}
    write(out / "summary.md", summary_md(out, result, table, info))
    print(table)
    if failed:
        print(f"error: these runs failed: {' '.join(failed)} (logs in {out / 'logs'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
