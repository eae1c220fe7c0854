"""``gfmkit cluster``: machine profiles and the batch scripts made from them.

    gfmkit cluster profiles
    gfmkit cluster running | stop [CLUSTER_ID ...]
    gfmkit cluster script --profile frontier --nodes 2 --account ABC123 -- gfmkit train train.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gfmkit.cli.common import CLIError, positive_int, print_table
from gfmkit.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``gfmkit cluster`` and return its sub-parsers, so that more actions can join them."""
    parser = sub.add_parser(
        "cluster",
        help="machine profiles (hpc_profiles/), sbatch/qsub scripts made from them, running engine clusters",
        description="Profiles say how jobs run on a machine (scheduler, launcher, GPUs, modules, environment). "
        "A name resolves in $GFMKIT_PROFILES, then ~/.config/gfmkit/profiles, then gfmkit's hpc_profiles/.",
    )
    actions = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    profiles = actions.add_parser("profiles", help="list the profiles and where each comes from")
    profiles.set_defaults(func=run_profiles)

    script = actions.add_parser(
        "script",
        help="print (or write) a batch script that runs COMMAND on N nodes",
        description="A complete sbatch/qsub script (a bash script for profiles without a scheduler): headers, "
        "modules, environment, this Python environment first on PATH, and the profile's launcher running "
        "COMMAND. Give COMMAND after '--'; its words reach the program verbatim.",
    )
    script.add_argument("--profile", required=True, help="profile name or YAML path")
    script.add_argument("--nodes", type=positive_int, default=1)
    script.add_argument("--ranks-per-node", type=positive_int, help="default: the profile's")
    script.add_argument("--account", help="project to charge (default: the profile's)")
    script.add_argument("--queue", help="partition, QOS or queue (default: the profile's)")
    script.add_argument("--walltime", help="HH:MM:SS or minutes (default: the profile's)")
    script.add_argument("--job-name", default="gfmkit")
    script.add_argument("--array", help="job array range, e.g. 0-9; the index is $GFMKIT_ARRAY_INDEX")
    script.add_argument("--after", action="append", metavar="JOBID", help="start after this job succeeded (repeatable)")
    script.add_argument("--no-activate", action="store_true", help="do not put this Python environment first on PATH")
    script.add_argument("--output", type=Path, help="write the script to this file (atomically) instead of printing "
                        "it; an existing directory gets JOB_NAME.sbatch/.pbs/.sh added to it")
    script.add_argument("--overwrite", action="store_true", help="replace the --output file if it exists")
    script.add_argument("program", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    script.set_defaults(func=run_script)

    running = actions.add_parser("running", help="list gfmkit engine clusters that are running (started with persist=True)")
    running.set_defaults(func=run_running)
    stop = actions.add_parser("stop", help="stop running gfmkit engine clusters and every process they started")
    stop.add_argument("cluster_ids", nargs="*", metavar="CLUSTER_ID", help="default: all gfmkit clusters")
    stop.set_defaults(func=run_stop)
    return actions


def run_running(args: argparse.Namespace) -> int:
    from gfmkit.cluster.engines import running

    table = running()
    if len(table):
        print_table(table.drop(columns=["cluster_file"]))
    else:
        print("no gfmkit cluster is running")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from gfmkit.cluster.engines import stop_clusters

    stopped = stop_clusters(args.cluster_ids or None)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing"))
    return 0


def run_profiles(args: argparse.Namespace) -> int:
    import pandas as pd

    from gfmkit.cluster.profiles import available_profiles, load_profile

    rows = []
    for name, path in available_profiles().items():
        try:
            p = load_profile(path)
        except ConfigError as exc:
            print(f"gfmkit cluster profiles: skipping {path}: {exc}", file=sys.stderr)
            continue
        rows.append(
            {
                "name": name,
                "scheduler": p.scheduler,
                "launcher": p.launcher.command,
                "GPUs/node": p.gpus_per_node,
                "ranks/node": p.ranks_per_node,
                "backend": p.backend,
                "source": str(path),
            }
        )
    if not rows:
        raise CLIError("no profiles found")
    print_table(pd.DataFrame(rows))
    return 0


def run_script(args: argparse.Namespace) -> int:
    from gfmkit.cluster.profiles import load_profile
    from gfmkit.cluster.scripts import render_batch_script
    from gfmkit.files import atomic_write_text
    from gfmkit.outputs import output_file

    command = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not command:
        raise CLIError("give the command to run after '--', e.g. -- gfmkit train train.yaml")
    try:
        profile = load_profile(args.profile)
        text = render_batch_script(
            profile,
            command,
            nodes=args.nodes,
            ranks_per_node=args.ranks_per_node,
            account=args.account,
            queue=args.queue,
            walltime=args.walltime,
            job_name=args.job_name,
            array=args.array,
            depends_on=args.after,
            activate=None if args.no_activate else sys.prefix,
        )
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if args.output is None:
        sys.stdout.write(text)
    else:
        suffix = {"slurm": ".sbatch", "pbs": ".pbs"}.get(profile.scheduler, ".sh")
        target = output_file(args.output, f"{args.job_name}{suffix}", overwrite=args.overwrite)
        atomic_write_text(target, text).chmod(0o755)
        print(f"wrote {target}", file=sys.stderr)
    return 0
