"""Rewrite the README's results section from the current reports (``embedlab report --markdown``).

    .venv/bin/python tools/update_readme_results.py                    # after `make demo`, from the repo root
    .venv/bin/python tools/update_readme_results.py --run "2026-11-23, 2 CPU cores, no GPU"
    .venv/bin/python tools/update_readme_results.py --check            # exit 1 if the README is out of date

Replaces everything between ``<!-- results:start -->`` and ``<!-- results:end -->``
with a line naming the run and the tables that ``embedlab report --markdown``
prints from ``reports/*/metrics.json`` (paths relative to the working
directory, as for ``embedlab report``). Refuses to write when there are no
reports: the README never gets numbers that no run produced.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

from embedlab.config import load_params
from embedlab.report import results_report

START, END = "<!-- results:start -->", "<!-- results:end -->"


def default_run(reports: Path = Path("reports")) -> str:
    """"<date of the newest metrics.json>, <this machine>": right when run where `make demo` ran."""
    newest = max(p.stat().st_mtime for p in reports.glob("**/metrics.json"))
    date = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).date().isoformat()
    return f"{date}, {platform.system()} {platform.machine()} with {os.cpu_count()} CPU cores"


def results_block(params_file: str, run: str) -> str:
    tables = results_report(load_params(params_file), markdown=True)
    return (f"{START}\nThe tables below are the output of `embedlab report --markdown`, written here by "
            f"`tools/update_readme_results.py` from the `reports/` of a real `make demo` run: {run}. "
            f"Small-data numbers: [docs/demo.md](docs/demo.md) says how to read them.\n\n{tables}\n{END}")


def replace_block(text: str, block: str) -> str:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {START} ... {END} section")
    return text[:start] + block + text[end + len(END):]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", help='the run the reports come from, e.g. "2026-11-23, 2 CPU cores, no GPU" '
                    "(default: the newest metrics.json's date and this machine)")
    ap.add_argument("--check", action="store_true", help="only compare: exit 1 if the README differs")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not any(Path("reports").glob("**/metrics.json")):
        print("update_readme_results: no reports/**/metrics.json here: run `make demo` first", file=sys.stderr)
        return 2
    readme = Path(args.readme)
    text = readme.read_text(encoding="utf-8")
    if args.check:
        # Compare the tables only: the line naming the run is not derivable from the reports.
        tables = results_report(load_params(args.params), markdown=True)
        section = text[text.find(START):text.find(END)]
        if tables not in section:
            print(f"{readme}: the results section differs from `embedlab report --markdown`", file=sys.stderr)
            return 1
        return 0
    new = replace_block(text, results_block(args.params, args.run or default_run()))
    readme.write_text(new, encoding="utf-8")
    print(f"{readme}: results section rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
