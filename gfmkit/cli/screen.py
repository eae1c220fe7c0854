"""``gfmkit screen``: stream a source through every head of a model into an ADIOS2 results store."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import (
    CLIError,
    non_negative_int,
    positive_int,
    print_json,
    print_table,
    rank,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gfmkit.studies.screen import (
        DEFAULT_CHUNK,
        DEFAULT_MAX_EDGES,
        FORCES,
        PRECISIONS,
        WEIGHTINGS,
    )

    parser = sub.add_parser(
        "screen", help="screen structures through every head of a model into a results store",
        description="Reads (or makes) structures, graphs and batches them by an edge budget and writes one row "
        "per structure (each head's energy per atom, the weighted energy, the heads' disagreement, max |F|) "
        "into an ADIOS2 results store. Under mpiexec/srun every rank screens a contiguous share. A screen "
        "started again with the same settings resumes from its finished chunks.")
    parser.add_argument("checkpoint", type=Path, help="model checkpoint (.pt)")
    parser.add_argument("--source", required=True, action="append",
                        help="a store, files (globs), an ASE database, or random:COUNT[:MIN-MAX][:ELEMENTS]"
                        "[:cluster][:seed=S]; repeat for several")
    parser.add_argument("--out", type=Path, required=True, help="results store to write (RESULTS.bp)")
    parser.add_argument("--heads", default="all", help="'all' energy heads or names separated by commas")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="auto")
    parser.add_argument("--forces", choices=FORCES, default="none")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--max-edges", type=positive_int, default=DEFAULT_MAX_EDGES, help="edges per batch")
    parser.add_argument("--chunk-size", type=positive_int, default=DEFAULT_CHUNK, help="structures per resumable chunk")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader processes that graph ahead")
    parser.add_argument("--prefetch", nargs="?", choices=("auto", "on", "off", "process", "thread"), const="on",
                        default="auto", help="the next batches are built while the model runs, by a forked process "
                        "or a thread: on (the process where fork is available), process, thread, off, or auto "
                        "(default: on when this rank has three or more cores to itself, or two with --forces none)")
    parser.add_argument("--save-forces", action="store_true", help="keep per-atom weighted forces")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=non_negative_int, default=0, metavar="K", help="print the top K rows afterwards")
    parser.add_argument("--by", default="energy_per_atom", help="column that ranks the top K")
    parser.add_argument("--summary-json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace a results store gfmkit wrote")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gfmkit.config import ConfigError
    from gfmkit.studies.screen import screen, top_hits

    table = screen(args.checkpoint, args.source if len(args.source) > 1 else args.source[0], args.out,
                   heads=args.heads, weighting=args.weighting, forces=args.forces, precision=args.precision,
                   max_edges=args.max_edges, chunk_size=args.chunk_size, workers=args.workers,
                   prefetch={"on": True, "off": False}.get(args.prefetch, args.prefetch),
                   save_forces=args.save_forces, device=args.device, overwrite=args.overwrite,
                   progress=not getattr(args, "no_progress", False))
    summary = table.attrs["summary"]
    if args.summary_json:
        print_json(summary)
    elif rank() == 0:
        print(f"screened {summary['structures']} structures in {summary['seconds']:.1f} s "
              f"({summary['structures_per_s']:.1f} structures/s on {summary['ranks']} rank(s)) -> {args.out}")
        print_table(table.round(3))
    if args.top and rank() == 0:
        try:
            hits, _ = top_hits(args.out, args.top, args.by, atoms=False)
        except ConfigError as exc:
            raise CLIError(f"--by: {exc} (the screen itself finished: its results are in {args.out})") from None
        print_table(hits.round(4))
    return 0
