"""``gfmkit figures``: redraw every study's, training run's and evaluation's figures from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import CLIError, comma_list, positive_int, print_table, rank


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures",
        help="regenerate paper figures from run directories",
        description="Walk the given folders, recognise precision, fine-tuning and scaling studies, training runs "
        "and evaluations by the files gfmkit wrote, and redraw their figures into --out (PNG and PDF with "
        "embedded fonts). Nothing is recomputed: the figures come from the run directories alone.",
    )
    p.add_argument("paths", type=Path, nargs="+", metavar="DIR", help="run or study directories, or folders of them")
    p.add_argument("--out", type=Path, default=Path("figures"), help="where the figures go (default figures/)")
    p.add_argument("--formats", default="png,pdf", type=comma_list, help="comma-separated matplotlib formats (default png,pdf)")
    p.add_argument("--dpi", type=positive_int, default=300)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gfmkit.viz.figures import regenerate

    if rank() != 0:
        return 0
    formats = args.formats
    try:
        table = regenerate(args.paths, args.out, formats=formats, dpi=args.dpi)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if table.empty:
        raise CLIError(f"nothing to draw below {', '.join(map(str, args.paths))} (no study, training run or evaluation)")
    print_table(table.assign(files=table["files"].map(len)).rename(columns={"files": "files written"}))
    failed = table["error"].notna().sum()
    print(f"{len(table) - failed} figure(s) in {args.out}" + (f"; {failed} directory(ies) could not be drawn" if failed else ""))
    return 1 if failed else 0
