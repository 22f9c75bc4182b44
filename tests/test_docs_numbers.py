"""Measured numbers live in one file (docs/numbers.json) and the README's Results table is generated from
it; the CPU recipe for the paper network is what the README says it is."""
import importlib.util
import json
import re
from pathlib import Path

from twogpu_alexnet.engine.config import load_config
from twogpu_alexnet.engine.schedule import Schedule

ROOT = Path(__file__).resolve().parents[1]


def _numbers():
    spec = importlib.util.spec_from_file_location("numbers", ROOT / "docs" / "numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_results_table_is_generated_from_numbers_json():
    numbers = _numbers()
    readme = (ROOT / "README.md").read_text()
    assert numbers.render(readme, numbers.rows()) == readme, "run python3 docs/numbers.py"
    assert numbers.main(["--check"]) == 0
    changed = [dict(r) for r in numbers.rows()]
    changed[0]["value"] = "99 s"
    assert "| 99 s |" in numbers.render(readme, changed)


def test_each_measured_figure_is_quoted_once():
    """The demo's time and error and the other CLI rows' percentages appear in the generated table only
    (the colour study's rows are also described in docs/specialization.md, from its own result files)."""
    numbers = _numbers()
    pages = {p: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    everything = numbers.rows() + numbers.rows(page="docs/training.md")
    for row in (r for r in everything if not r["id"].startswith("colour")):
        for figure in re.findall(r"\d+\.\d+%", row["value"]):
            places = [p.name for p, text in pages.items() for _ in range(text.count(figure))]
            assert places == [Path(row.get("page", "README.md")).name], (figure, places)
    assert json.loads((ROOT / "docs" / "numbers.json").read_text())["rows"][0]["id"] == "demo"


def test_paper_cpu_config_is_the_cpu_recipe():
    c = load_config(ROOT / "configs" / "paper-cpu.toml", ["data.root='store'"])
    assert (c.model.preset, c.model.mode, c.speed.amp) == ("paper", "grouped", "none")
    assert c.data.workers == -1 and c.data.source == "store"
    assert 0 < c.train.log_every <= 10 and c.train.val_images > 0 and c.train.max_steps_per_epoch > 0
    assert c.schedule.kind == "step" and all(m <= c.train.epochs for m in c.schedule.milestones)


def test_the_step_schedule_drops_at_its_milestones_only():
    c = load_config(ROOT / "configs" / "paper-cpu.toml", ["data.root='store'", "schedule.milestones=[3, 5]"])
    s = Schedule(c.schedule)
    assert [s.factor(e, "fc6") for e in range(1, 7)] == [1, 1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]
    assert s.factor(3, "conv1", "bias") == 0.1               # every group, biases too
    assert not s.end_epoch(1, 0.9) and not s.end_epoch(2, 0.9)   # the validation error changes nothing
