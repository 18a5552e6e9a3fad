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

    c = sub.add_parser("compare", help="run an experiment (a config with arms:) to its verdict, or compare stored "
                                       "studies at equal budget")
    c.add_argument("studies", nargs="+", metavar="CONFIG_OR_STUDY",
                   help="an experiment config (a YAML file or bundled config with arms:), run or resumed; or one "
                        "stored study (grouped by --by), or several (one group each)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="experiment: override a config key, e.g. --set study.n_trials=64 (repeatable)")
    c.add_argument("--report", default=None, metavar="DIR",
                   help="experiment: the report's folder (default: report-<experiment> here)")
    c.add_argument("--workers", type=int, default=None, help="experiment: worker actors (default as for study)")
    c.add_argument("--ray-address", default=None, help="experiment: join this Ray cluster")
    c.add_argument("--dry-run", action="store_true", help="experiment: validate the config and print it; run nothing")
    c.add_argument("--allow-space-change", action="store_true",
                   help="experiment: continue stored arm studies whose search space differs from the config's")
    c.add_argument("--storage", default="sqlite:///optsearch.db",
                   help="stored studies: Optuna storage URL (default: %(default)s)")
    c.add_argument("--by", choices=["optimizer", "schedule"], default="optimizer",
                   help="one stored study: group its trials by this")

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
            return _compare(args)
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


def _before_run(args: argparse.Namespace, loaded) -> bool:
    """What ``study`` and ``compare CONFIG`` do with a loaded config before running it:
    check ``--workers``, print the config's notes, and for ``--dry-run`` print the resolved
    YAML. False when there is nothing to run (a dry run); else the Ray address is checked."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers", args.workers, "must be >= 1")
    for note in loaded.notes:
        print(f"optsearch: note: {loaded.path}: {note}", file=sys.stderr)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(loaded.raw, sort_keys=False), end="")
        return False
    from optsearch.search import cluster

    cluster.join_check(cluster.address_of(args.ray_address))  # before Ray loads (it reads RAY_AUTH_MODE then)
    return True


def _study(args: argparse.Namespace) -> int:
    from optsearch.search import config

    cfg = config.load(args.config, args.overrides)
    if not _before_run(args, cfg):
        return 0
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


def _compare(args: argparse.Namespace) -> int:
    from optsearch.search import config

    if len(args.studies) == 1 and config.is_experiment(args.studies[0]):
        return _experiment(args)
    for flag, given in (("--set", args.overrides), ("--report", args.report), ("--workers", args.workers),
                        ("--ray-address", args.ray_address), ("--dry-run", args.dry_run),
                        ("--allow-space-change", args.allow_space_change)):
        if given:
            raise ConfigError(flag, given if given is not True else None,
                              "only with an experiment config (a YAML file with arms:), not with stored studies")
    from optsearch.search.report import compare_studies, print_comparison

    rows, maximize = compare_studies(_abs_storage(args.storage), args.studies, args.by)
    print_comparison(rows, maximize)
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from optsearch.search import config

    name = args.studies[0]
    exp = config.load_experiment(name, args.overrides)
    if not _before_run(args, exp):
        return 0
    from rich.console import Console

    from optsearch.search.experiment import resume_command, run_experiment
    from optsearch.search.verdict import print_summary

    try:
        summary = run_experiment(exp, workers=args.workers, ray_address=args.ray_address,
                                 allow_space_change=args.allow_space_change, report_dir=args.report)
    except ConfigError as err:  # found against a stored study or by a trainer: name the config
        if err.file is None and err.key.split(".")[0] in config.EXPERIMENT_KEYS:
            raise err.with_file(exp.path) from None
        raise
    console = Console()
    t = summary.get("tracking") or {}
    for e in t.get("errors") or []:
        console.print(f"[red]tracking: {e}[/]")
    if summary.get("interrupted"):
        print(f"optsearch: interrupted; resume with: {resume_command(name, args.overrides)}", file=sys.stderr)
        return 130
    if summary.get("error"):
        print(f"optsearch: error: {summary['error']}", file=sys.stderr)
        return 1
    print_summary(summary["analysis"], console, summary["report"])
    for note in summary.get("notes") or []:
        console.print(f"[yellow]{note}[/]", soft_wrap=True)
    if t.get("experiment_id"):
        from optsearch.search.tracking import ui_link

        console.print(f"MLflow UI: mlflow ui --backend-store-uri {t['uri']}", soft_wrap=True)
        console.print(f"  then open {ui_link(t['experiment_id'])}", soft_wrap=True)
    sys.stdout.flush()
    return 0
