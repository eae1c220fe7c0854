"""``gfmkit data``: build the demo stores, convert structure files to stores, inspect stores."""

from __future__ import annotations

import argparse
from pathlib import Path

from gfmkit.cli.common import (
    CLIError,
    comma_list,
    image_file,
    non_negative_int,
    positive_float,
    print_json,
    print_table,
    rank,
    save_figure_file,
)
from gfmkit.comm import world
from gfmkit.config import ConfigError, config_to_dict, load_config
from gfmkit.files import atomic_path
from gfmkit.outputs import agree, output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="build demo stores, convert structures into ADIOS2 stores, inspect stores",
        description="Structures in (any ase.io format, ASE databases incl. LMDB), one ADIOS2 store per dataset out.",
    )
    data = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    demo = data.add_parser("demo", help="build the built-in demo datasets (ASE EMT/Morse labels, no downloads)")
    demo.add_argument("--out", required=True, type=Path, help="directory for the <dataset>.bp stores")
    demo.add_argument("--scale", type=positive_float, default=1.0, help="multiply every dataset's size (default 1)")
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--datasets", nargs="+", help="only these demo datasets")
    demo.add_argument("--overwrite", action="store_true", help="replace demo stores that exist in --out")
    demo.set_defaults(func=run_demo)

    convert = data.add_parser(
        "convert",
        help="convert structure files / ASE databases into one dataset store",
        description="Read FILEs (any ase.io format; .db/.aselmdb/.lmdb as ASE databases), validate every "
        "structure, write one store. Under `mpiexec -n N` the ranks share the files and write one store.",
    )
    convert.add_argument("files", nargs="+", type=Path, metavar="FILE")
    convert.add_argument("--out", required=True, type=Path, help="store to write, e.g. mydata.bp")
    convert.add_argument("--config", type=Path, help="YAML DatasetSpec (name, level_of_theory, targets, labels, ...)")
    convert.add_argument("--dataset", help="dataset name (also the head name)")
    convert.add_argument("--level-of-theory", help="level-of-theory label, e.g. PBE, r2SCAN, wB97X/def2-TZVP")
    convert.add_argument("--targets", type=comma_list, help="comma-separated declared targets (default energy,forces)")
    convert.add_argument("--format", help="ase.io format, when the file suffix does not tell")
    convert.add_argument("--energy-key", help="info key of the energy (default: calculator results)")
    convert.add_argument("--forces-key", help="arrays key of the forces (default: calculator results)")
    convert.add_argument("--stress-key", help="info key of the stress")
    convert.add_argument("--virial-key", help="info key of a virial (turned into stress)")
    convert.add_argument("--energy-unit", help="eV, meV, Hartree, Ry, kcal/mol, kJ/mol")
    convert.add_argument("--length-unit", help="Angstrom, Bohr, nm")
    convert.add_argument("--forces-unit", help="e.g. Hartree/Bohr")
    convert.add_argument("--stress-unit", help="e.g. GPa, kbar, eV/Angstrom^3")
    convert.add_argument("--on-error", choices=["fail", "skip"], help="fail (default) or skip bad structures and report them")
    convert.add_argument("--min-distance", type=float, help="closest allowed interatomic distance, Å (default 0.1)")
    convert.add_argument("--seed", type=non_negative_int, help="split seed (default 0)")
    convert.add_argument("--report", type=Path, help="write skipped structures and reasons to this CSV")
    convert.add_argument("--engine", default="BP5", choices=["BP4", "BP5"])
    convert.add_argument("--overwrite", action="store_true",
                         help="replace --out (and --report) if they exist; only a gfmkit store is ever replaced")
    convert.set_defaults(func=run_convert)

    info = data.add_parser("info", help="counts, elements, targets, energy statistics and split sizes of stores")
    info.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="stores, or directories of stores")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)

    sampling = data.add_parser(
        "sampling",
        help="how often each dataset is drawn under a sampling strategy (imbalance planning)",
        description="Per dataset: size, draw probability and passes per epoch, for one strategy or all.",
    )
    sampling.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="stores, or directories of stores")
    sampling.add_argument("--split", default="train", choices=["train", "val", "test", "all"])
    sampling.add_argument("--strategy", choices=["proportional", "uniform", "temperature", "all"], default="all")
    sampling.add_argument("--temperature", type=float, default=2.0, help="T of p ~ n^(1/T) (default 2)")
    sampling.add_argument("--figure", type=Path, help="also write a figure comparing the strategies (a file, or a directory to add it to)")
    sampling.add_argument("--overwrite", action="store_true", help="replace the --figure file if it exists")
    sampling.set_defaults(func=run_sampling)

    figure = data.add_parser("figure", help="dataset-statistics figure (sizes, element overlap)")
    figure.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="stores, or directories of stores")
    figure.add_argument("--out", required=True, type=Path,
                        help="image file (png, pdf, svg), or an existing directory to add datasets.png to")
    figure.add_argument("--overwrite", action="store_true", help="replace the image file if it exists")
    figure.set_defaults(func=run_figure)


def run_demo(args: argparse.Namespace) -> int:
    from gfmkit.data.demo import build_demo
    from gfmkit.data.demo.catalogue import select_datasets

    try:
        select_datasets(args.datasets)
    except KeyError as exc:  # an unknown demo dataset name
        raise CLIError(f"--datasets: {exc.args[0]}") from None
    table = build_demo(args.out, seed=args.seed, scale=args.scale, datasets=args.datasets, progress=rank() == 0,
                       comm=world(), overwrite=args.overwrite)
    print_table(table)
    return 0


def _spec_from_args(args: argparse.Namespace):
    from gfmkit.data.spec import DatasetSpec

    data = config_to_dict(load_config(DatasetSpec, args.config)) if args.config else {}
    overrides = {"name": args.dataset, "level_of_theory": args.level_of_theory, "split_seed": args.seed}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.targets:
        data["targets"] = args.targets
    labels = data.setdefault("labels", {})
    for key in ("energy", "forces", "stress", "virial"):
        value = getattr(args, f"{key}_key")
        if value is not None:
            labels[key] = value
    for key in ("energy_unit", "length_unit", "forces_unit", "stress_unit"):
        if getattr(args, key) is not None:
            labels[key] = getattr(args, key)
    validation = data.setdefault("validation", {})
    if args.on_error:
        validation["policy"] = args.on_error
    if args.min_distance is not None:
        validation["min_distance"] = args.min_distance
    for required, flag in (("name", "--dataset"), ("level_of_theory", "--level-of-theory")):
        if required not in data:
            raise CLIError(f"give {flag} (or a --config with '{required}')")
    try:
        return load_config(DatasetSpec, data, where=str(args.config or "command line"))
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def run_convert(args: argparse.Namespace) -> int:
    from gfmkit.data.ingest import convert, convert_store
    from gfmkit.data.labels import StructureError

    spec = _spec_from_args(args)
    comm = world()
    report_path = agree(comm, lambda: args.report and output_file(args.report, "skipped.csv", overwrite=args.overwrite))
    stores = [f for f in args.files if f.is_dir() and f.suffix == ".bp"]
    if stores and len(args.files) > 1:
        raise CLIError(f"{stores[0]}: convert a store file (HydraGNN .bp) on its own, not with other inputs")
    try:
        if stores:  # a HydraGNN (or gfmkit) store file: every split, each structure's split kept
            report = convert_store(stores[0], args.out, spec, comm=comm, progress=rank() == 0, engine=args.engine,
                                   overwrite=args.overwrite)
        else:
            report = convert(args.files, args.out, spec, comm=comm, format=args.format, progress=rank() == 0,
                             engine=args.engine, overwrite=args.overwrite)
    except StructureError as exc:
        raise CLIError(f"{exc}; no store was written (use --on-error skip to drop bad structures)") from None
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(f"{exc}; no store was written") from None
    if rank() == 0:
        print(f"{report} -> {args.out}")
        if report.skipped:
            print(report.table().to_string(index=False))
        if report_path:
            with atomic_path(report_path) as tmp:
                report.table().to_csv(tmp, index=False)
    return 0


def run_info(args: argparse.Namespace) -> int:
    import pandas as pd

    from gfmkit.data.multi import store_paths
    from gfmkit.data.readers import open_store

    infos = [open_store(path).info() for path in store_paths(args.stores)]  # gfmkit stores and HydraGNN files
    if args.json:
        print_json(infos if len(infos) > 1 else infos[0])
        return 0
    rows = [
        {
            "dataset": i["dataset"],
            "level_of_theory": i["level_of_theory"],
            "structures": i["structures"],
            "atoms": i["atoms"],
            "targets": ",".join(i["targets"]),
            "periodic": i["periodic"],
            "elements": " ".join(i["elements"]),
            "E/atom mean (eV)": i["energy_per_atom"].get("mean"),
            "E/atom std (eV)": i["energy_per_atom"].get("std"),
            "train/val/test": "/".join(str(v) for v in i["split_sizes"].values()),
        }
        for i in infos
    ]
    print_table(pd.DataFrame(rows))
    return 0


def run_figure(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from gfmkit.data.multi import open_stores
    from gfmkit.viz.data import dataset_overview

    stores = open_stores(args.stores).stores
    target = image_file(args.out, "datasets.png", overwrite=args.overwrite)
    save_figure_file(dataset_overview(stores), target)
    print(f"wrote {target}")
    return 0


def run_sampling(args: argparse.Namespace) -> int:
    import pandas as pd

    from gfmkit.data.multi import open_stores
    from gfmkit.data.sampling import sampling_plan

    multi = open_stores(args.stores)
    sizes = {
        s.name: len(s) if args.split == "all" else len(s.split_indices(args.split)) for s in multi.stores
    }
    strategies = ["proportional", "uniform", "temperature"] if args.strategy == "all" else [args.strategy]
    plans = {
        (f"temperature T={args.temperature:g}" if k == "temperature" else k): sampling_plan(sizes, k, temperature=args.temperature)
        for k in strategies
    }
    table = pd.concat([plan.assign(strategy=label) for label, plan in plans.items()], ignore_index=True)
    print_table(table[["strategy", "dataset", "structures", "share", "probability", "draws_per_epoch", "passes"]].round(4))
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        from gfmkit.viz.data import sampling_overview

        target = image_file(args.figure, "sampling.png", overwrite=args.overwrite)
        save_figure_file(sampling_overview(plans), target)
        print(f"wrote {target}")
    return 0
