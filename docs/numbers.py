"""Write the README's Results table from docs/numbers.json, the one file that holds the measured numbers.

    python3 docs/numbers.py            # rewrite the table between the two results markers of README.md
    python3 docs/numbers.py --check    # exit 1 when README.md does not show what numbers.json holds

A number is measured once, written into numbers.json with its command, hardware and torch version, and
quoted from there: the README's table is generated, and the other pages point to it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
README = DOCS.parent / "README.md"
BEGIN = "<!-- results: docs/numbers.py -->"
END = "<!-- /results -->"


def rows(path: Path = DOCS / "numbers.json") -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["rows"]


def table(entries: list[dict]) -> str:
    lines = ["| figure | value | hardware | torch | command |", "|---|---|---|---|---|"]
    for r in entries:
        lines.append(f"| {r['figure']} | {r['value']} | {r['hardware']} | {r['torch']} | `{r['command']}` |")
    return "\n".join(lines)


def render(text: str, entries: list[dict]) -> str:
    """``text`` (the README) with the table between the markers replaced by the table of ``entries``."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{README} has no results markers ({BEGIN} ... {END})")
    return f"{head}{BEGIN}\n{table(entries)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    new = render(text, rows())
    if "--check" in argv:
        if new != text:
            print("README.md's Results table differs from docs/numbers.json; run python3 docs/numbers.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
