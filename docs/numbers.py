"""Write the results tables of the README and the docs from docs/numbers.json, the one file that holds
the measured numbers.

    python3 docs/numbers.py            # rewrite the tables between the results markers of each page
    python3 docs/numbers.py --check    # exit 1 when a page does not show what numbers.json holds

A number is measured once, written into numbers.json with its command, hardware and torch version (and
the page whose table shows it: ``page``, default README.md), and quoted from there: the tables are
generated, and the prose points to them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
README = DOCS.parent / "README.md"
BEGIN = "<!-- results: docs/numbers.py -->"
END = "<!-- /results -->"


PAGES = {"README.md": README, "docs/training.md": DOCS / "training.md"}


def rows(path: Path = DOCS / "numbers.json", page: str = "README.md") -> list[dict]:
    """The rows ``page`` shows."""
    return [r for r in json.loads(path.read_text(encoding="utf-8"))["rows"] if r.get("page", "README.md") == page]


def table(entries: list[dict]) -> str:
    lines = ["| figure | value | hardware | torch | command |", "|---|---|---|---|---|"]
    for r in entries:
        command = r.get("command_md") or f"`{r['command']}`"      # command_md: markdown as it is (several commands)
        lines.append(f"| {r['figure']} | {r['value']} | {r['hardware']} | {r['torch']} | {command} |")
    return "\n".join(lines)


def render(text: str, entries: list[dict]) -> str:
    """``text`` (the README) with the table between the markers replaced by the table of ``entries``."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"a page has no results markers ({BEGIN} ... {END})")
    return f"{head}{BEGIN}\n{table(entries)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    stale = []
    for name, path in PAGES.items():
        text = path.read_text(encoding="utf-8")
        new = render(text, rows(page=name))
        if new != text:
            stale.append(name)
            if "--check" not in argv:
                path.write_text(new, encoding="utf-8")
    if stale and "--check" in argv:
        print(f"the results tables of {', '.join(stale)} differ from docs/numbers.json; run python3 docs/numbers.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
