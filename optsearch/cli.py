"""Command line: commands only, no logic. Bad input -> one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import sys

from optsearch.errors import ConfigError, StudyError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors: one line, exit 2
        self.exit(2, f"optsearch: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optsearch", description="Hyperparameter search for optimizer settings.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("study", help="run (or resume) the study a config describes")
    s.add_argument("config", help="a YAML file, or the name of a bundled config (see `optsearch configs`)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set study.n_trials=64 (repeatable)")
    s.add_argument("--workers", type=int, default=None, help="worker actors (default: one per GPU, else one per two cores)")
    s.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a local one")
    s.add_argument("--dry-run", action="store_true", help="validate the config and print it; run nothing")
    s.add_argument("--allow-space-change", action="store_true",
                   help="continue a stored study whose search space differs from the config's")

    e = sub.add_parser("export", help="print a trial's optimizer and schedule as PyTorch code")
    e.add_argument("study", help="study name")
    e.add_argument("--storage", default="sqlite:///optsearch.db", help="Optuna storage URL (default: %(default)s)")
    e.add_argument("--trial", type=int, default=None, help="trial number (default: the best)")
    e.add_argument("--format", choices=["python", "yaml", "json"], default="python")

    c = sub.add_parser("compare", help="compare optimizer variants (or studies) at equal budget")
    c.add_argument("studies", nargs="+", help="one study (grouped by --by) or several (one group each)")
    c.add_argument("--storage", default="sqlite:///optsearch.db", help="Optuna storage URL (default: %(default)s)")
    c.add_argument("--by", choices=["optimizer", "schedule"], default="optimizer")

    sub.add_parser("configs", help="list the bundled configs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "study":
            return _study(args)
        if args.command == "export":
            from optsearch.search.exporting import export_trial

            print(export_trial(_abs_storage(args.storage), args.study, args.trial, args.format))
            return 0
        if args.command == "compare":
            from optsearch.search.report import compare_studies, print_comparison

            rows, maximize = compare_studies(_abs_storage(args.storage), args.studies, args.by)
            print_comparison(rows, maximize)
            return 0
        if args.command == "configs":
            from optsearch.search.config import bundled_dir, description

            from rich.console import Console
            from rich.table import Table

            table = Table(show_header=False, box=None, padding=(0, 2, 1, 0))
            table.add_column("config", no_wrap=True, style="bold")
            table.add_column("what it studies")
            for f in sorted(bundled_dir().glob("*.yaml")):
                table.add_row(f.name, description(f))
            Console().print(table)
            return 0
    except ConfigError as err:
        print(f"optsearch: error: {err}", file=sys.stderr)
        return 2
    except StudyError as err:
        print(f"optsearch: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("optsearch: interrupted", file=sys.stderr)
        return 130
    return 1


def _abs_storage(url: str) -> str:
    from pathlib import Path

    from optsearch.search import urls

    return urls.absolute(url, Path.cwd())


def _study(args: argparse.Namespace) -> int:
    from optsearch.search import config

    cfg = config.load(args.config, args.overrides)
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", args.workers, "must be >= 1")
    for note in cfg.notes:
        print(f"optsearch: note: {cfg.path}: {note}", file=sys.stderr)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(cfg.raw, sort_keys=False), end="")
        return 0
    from optsearch.search import cluster

    cluster.join_check(cluster.address_of(args.ray_address))  # before Ray loads (it reads RAY_AUTH_MODE then)
    from optsearch.search.run import print_summary, run_study, unfinished

    try:
        summary = run_study(cfg, workers=args.workers, ray_address=args.ray_address,
                            allow_space_change=args.allow_space_change)
    except ConfigError as err:  # found against the stored study or a trainer: name the config
        if err.file is None and err.key.split(".")[0] in config.TOP_KEYS:
            raise err.with_file(cfg.path) from None
        raise
    print_summary(summary)
    if summary.get("interrupted"):
        import shlex

        again = " ".join(["optsearch", "study", shlex.quote(args.config)]
                         + [f"--set {shlex.quote(o)}" for o in args.overrides])
        print(f"optsearch: interrupted; resume with: {again}", file=sys.stderr)
        return 130
    problem = unfinished(summary)
    if problem:
        print(f"optsearch: error: {problem}", file=sys.stderr)
        return 1
    return 0
