"""The experiment's verdict: numbers from the stored trials, a plain-words answer, the report.

Three steps, each usable on its own:

- ``collect`` reads an experiment's studies (each arm's search and its seed re-runs) into
  plain ``ArmData``: trial values, counts, epochs, compute seconds, the top configs and
  their re-runs by seed, parameter importances, the search space.
- ``analyse`` is pure (plain data in, a dict out; ``search/stats.py`` does the statistics):
  E[best of k] per arm (unbiased and Dodge's, bootstrap bands, never past an arm's trials),
  P(best of k of A beats best of k of B) for every pair, each arm's winner (the re-run
  config with the best mean validation value over the paired seeds) and its test value
  mean ± std, paired differences, the verdict of the leading arm against each other one,
  the Adam-family-vs-SGD question when both are present, and the paragraph that says it.
- ``write_report`` writes ``report.md``, its PNG figures and ``verdict.json``;
  ``print_summary`` shows the table and the paragraph in 80 columns.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optsearch.search import stats

LEVEL = 0.95
N_BOOT = 1000
# Optimizer variants by family, for the question the project exists to answer: is a tuned
# Adam as good as a tuned SGD with momentum? (muon is neither: it is reported, not grouped.)
FAMILY = {"sgd": "SGD", "sf_sgd": "SGD", "adam_l2": "Adam", "adamw": "Adam", "amsgrad": "Adam", "nadamw": "Adam",
          "radam": "Adam", "sf_adamw": "Adam"}


@dataclass
class ArmData:
    """One arm, as read from its studies (or made up, in tests)."""

    name: str
    values: list[float]                       # the search's finished trials' values, in trial order
    counts: dict = field(default_factory=dict)  # complete, pruned, failed (counted), retried
    epochs: int = 0                           # epochs reported over the search
    seconds: float = 0.0                      # the search's trials' durations, summed
    rerun_seconds: float = 0.0
    variants: tuple = ()                      # the optimizer variants the arm's space holds
    space: list = field(default_factory=list)  # the arm's space, one line per knob
    importances: dict | None = None           # fANOVA importance per searched knob
    configs: dict = field(default_factory=dict)  # top search trials: number -> {"value", "params", "build"}
    reruns: dict = field(default_factory=dict)   # number -> {"val": {seed: v}, "test": {seed: v}}


# --- reading the studies ------------------------------------------------------------------------
def collect(exp) -> list[ArmData]:
    """Every arm of ``exp`` (a ``config.Experiment``) from its stored studies."""
    import optuna

    from optsearch.search import study as studies
    from optsearch.search.experiment import rerun_info, top_configs
    from optsearch.search.report import trial_value

    maximize = exp.base.study.direction == "maximize"
    test = exp.verdict.test_metric
    storage = studies.make_storage(exp.base.study.storage)
    out = []
    try:
        for arm, cfg in exp.arms.items():
            try:
                study = optuna.load_study(study_name=cfg.study.name, storage=storage)
            except KeyError:
                study = None
            trials = study.get_trials(deepcopy=False) if study is not None else []
            finished = [t for t in trials if t.state in studies.FINISHED]
            data = ArmData(
                name=arm,
                values=[v for v in (trial_value(t) for t in finished) if v is not None],
                counts={k: v for k, v in studies.counts(study).items() if k in ("complete", "pruned", "failed", "retried")}
                if study is not None else {},
                epochs=sum(len(t.intermediate_values) for t in finished),
                seconds=_seconds(finished),
                variants=tuple(cfg.space.optimizer.options),
                space=space_lines(cfg.space),
                importances=_importances(study) if study is not None else None,
                configs={t.number: {"value": t.value, "params": t.user_attrs.get("params"),
                                    "build": t.user_attrs.get("build")}
                         for t in top_configs(trials, exp.verdict.top_k, maximize)},
            )
            try:
                reruns = optuna.load_study(study_name=f"{cfg.study.name}.reruns", storage=storage)
            except KeyError:
                reruns = None
            if reruns is not None:
                rtrials = reruns.get_trials(deepcopy=False)
                by_number = {t.number: t for t in rtrials}
                data.rerun_seconds = _seconds([t for t in rtrials if t.state in studies.FINISHED])
                for t in rtrials:
                    info = rerun_info(t, by_number)
                    if t.state != optuna.trial.TrialState.COMPLETE or info is None or info["of"] not in data.configs:
                        continue
                    runs = data.reruns.setdefault(info["of"], {"val": {}, "test": {}})
                    runs["val"][info["seed"]] = t.value
                    value = t.user_attrs.get(f"final_{test}") if test else None
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        runs["test"][info["seed"]] = float(value)
            out.append(data)
    finally:
        storage.engine.dispose()
    return out


def _seconds(trials) -> float:
    """Compute spent: the durations of the trials that count (a trial cut short by a crash or
    an interruption ran again; its duration may be mostly the time nobody was running it)."""
    from optsearch.search.study import counts_against_budget

    return float(sum(t.duration.total_seconds() for t in trials
                     if t.duration is not None and counts_against_budget(t)))


def _importances(study) -> dict | None:
    """fANOVA importances (Optuna's default evaluator, seeded) over the complete trials, or
    None when they cannot be computed (fewer than two trials, nothing searched)."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        return {k: float(v) for k, v in found.items()} or None
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None


def space_lines(space) -> list[str]:
    """An arm's space in words, one line per knob that is searched or set by the config."""
    from optsearch.spaces import distributions as D

    def words(d) -> str:
        if isinstance(d, D.OneMinus):
            return f"1 - ({words(d.inner)})"
        if isinstance(d, D.Constant):
            return repr(d.value)
        dist = d.dist
        if hasattr(dist, "choices"):
            return f"one of {list(dist.choices)}"
        scale = "log-uniform" if dist.log else "uniform"
        step = f", step {dist.step:g}" if dist.step is not None else ""
        return f"{scale} [{dist.low:g}, {dist.high:g}]{step}"

    lines = []
    for section in (space.optimizer, space.schedule):
        multi = len(section.options) > 1
        for name, knobs in section.options.items():
            lines.append(f"{section.key}: {name}" + (" (one of the choices)" if multi else ""))
            for knob, d in knobs.items():
                if D.is_searched(d) or knob in section.given.get(name, ()):
                    lines.append(f"  {knob}: {words(d)}")
    for knob, d in space.groups.items():
        if D.is_searched(d):
            lines.append(f"param_groups.{knob}: {words(d)}")
    return lines


# --- the analysis (pure) --------------------------------------------------------------------------
def _none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def analyse(arms: list[ArmData], *, metric: str = "val_acc", test_metric: str | None = "test_acc",
            maximize: bool = True, ks: tuple = (1, 2, 4, 8), seeds: tuple = (), val_size: int | None = None,
            test_size: int | None = None, min_effect: float = 0.0, meta: dict | None = None,
            n_boot: int = N_BOOT) -> dict:
    """Every number of the report, and the verdict, from plain arm data.

    The winner of an arm is its re-run config with the best mean ``metric`` over the paired
    seeds (the validation split: the test split plays no part in choosing); the verdict is
    on ``test_metric`` over the same seeds (on ``metric`` when None). The leader is the arm
    whose winner has the best mean; it is compared with each other arm by
    ``stats.verdict`` (paired by seed, margin one evaluation example or ``min_effect``).
    """
    sign = 1.0 if maximize else -1.0
    notes = []
    if test_metric and any(runs["val"] for a in arms for runs in a.reruns.values()) and not any(
            runs["test"] for a in arms for runs in a.reruns.values()):
        notes.append(f"The trainer reported no {test_metric}, so the verdict is on {metric}, the metric the "
                     f"winners were chosen on: expect it to flatter them a little.")
        test_metric, test_size = None, None
    vmetric = test_metric or metric
    vsize = test_size if test_metric else val_size
    res_val = stats.resolution(val_size) if val_size else None
    res_verdict = stats.resolution(vsize) if vsize else None
    seeds = tuple(seeds)
    rows = []
    for a in arms:
        n = len(a.values)
        row: dict[str, Any] = {
            "name": a.name, "n": n, "counts": dict(a.counts), "epochs": a.epochs, "seconds": a.seconds,
            "rerun_seconds": a.rerun_seconds, "variants": list(a.variants), "space": list(a.space),
            "importances": a.importances, "family": _family(a.variants),
            "best": (max(a.values) if maximize else min(a.values)) if n else None,
            "mean": float(sum(a.values) / n) if n else None,
            "curve": stats.expected_max_summary(a.values, None, maximize, n_boot=n_boot, seed=0) if n else [],
        }
        row["at_k"] = {r["k"]: r for r in row["curve"] if r["k"] in ks}
        configs = []
        for rank, (number, c) in enumerate(sorted(a.configs.items(), key=lambda kv: (-sign * kv[1]["value"], kv[0]))):
            runs = a.reruns.get(number, {"val": {}, "test": {}})
            val = {s: v for s, v in runs["val"].items() if not seeds or s in seeds}
            test = {s: v for s, v in runs["test"].items() if not seeds or s in seeds}
            vm, vs = stats.mean_std(list(val.values())) if val else (None, None)
            tm, ts = stats.mean_std(list(test.values())) if test else (None, None)
            configs.append({"number": number, "rank": rank + 1, "search": c["value"], "params": c.get("params"),
                            "build": c.get("build"), "val": val, "test": test, "val_mean": vm, "val_std": _none(vs),
                            "test_mean": tm, "test_std": _none(ts), "winner": False})
        ran = [c for c in configs if c["val"]]
        winner = max(ran, key=lambda c: (sign * c["val_mean"], -c["rank"])) if ran else None
        if winner is not None:
            winner["winner"] = True
        row["configs"] = configs
        row["winner"] = winner
        row["by_seed"] = (winner["test"] if test_metric else winner["val"]) if winner else {}
        if row["by_seed"]:
            m, s = stats.mean_std(list(row["by_seed"].values()))
            row["verdict_mean"], row["verdict_std"] = m, _none(s)
        else:
            row["verdict_mean"] = row["verdict_std"] = None
        rows.append(row)

    # Which search finds better values at a budget of k trials: every ordered pair.
    pairwise: dict[int, dict[str, dict[str, dict | None]]] = {}
    for k in ks:
        pairwise[k] = {r["name"]: {} for r in rows}
    for i, ra in enumerate(rows):
        for rb in rows[i + 1:]:
            for k in ks:
                if k > min(ra["n"], rb["n"]):
                    pairwise[k][ra["name"]][rb["name"]] = pairwise[k][rb["name"]][ra["name"]] = None
                    continue
                bp = stats.p_best_of_k_beats(_values(arms, ra["name"]), _values(arms, rb["name"]), k,
                                             n_boot=n_boot, seed=0, maximize=maximize, level=LEVEL)
                pairwise[k][ra["name"]][rb["name"]] = {"p": bp.p, "low": bp.low, "high": bp.high}
                pairwise[k][rb["name"]][ra["name"]] = {"p": 1 - bp.p, "low": 1 - bp.high, "high": 1 - bp.low}

    # Seed re-runs: paired differences of the winners, every pair.
    ready = [r for r in rows if r["by_seed"]]
    differences = []
    for i, ra in enumerate(ready):
        for rb in ready[i + 1:]:
            try:
                pd = stats.paired_difference(ra["by_seed"], rb["by_seed"], LEVEL)
            except ValueError:
                continue
            differences.append({"a": ra["name"], "b": rb["name"], "mean": pd.mean, "low": _none(pd.low),
                                "high": _none(pd.high), "p": _none(pd.p_value), "pairs": pd.n_pairs})

    # The verdict: the leader against each other arm.
    leader = max(ready, key=lambda r: (sign * r["verdict_mean"], -rows.index(r))) if len(ready) >= 2 else None
    verdicts = []
    if leader is not None:
        for other in ready:
            if other is leader:
                continue
            try:
                verdicts.append(_verdict(leader, other, arms, ks, maximize, res_verdict, min_effect, vmetric, n_boot))
            except ValueError as err:  # no seed in common (every re-run of one failed): no comparison
                notes.append(f"{leader['name']} and {other['name']} cannot be compared: {err}.")
    adjusted = holm([v.p_value for v in verdicts])
    family = _family_verdict(ready, arms, ks, maximize, res_verdict, min_effect, vmetric, n_boot)
    ranked = sorted((r for r in rows if r["best"] is not None), key=lambda r: -sign * r["best"])
    gap = None
    if len(ranked) >= 2:
        d = abs(ranked[0]["best"] - ranked[1]["best"])
        gap = {"first": ranked[0]["name"], "second": ranked[1]["name"], "gap": d,
               "examples": d * val_size if val_size else None}
    analysis = {
        "meta": dict(meta or {}), "metric": metric, "test_metric": test_metric, "verdict_metric": vmetric,
        "maximize": maximize, "ks": list(ks), "seeds": list(seeds), "level": LEVEL,
        "val_size": val_size, "test_size": test_size, "verdict_size": vsize,
        "resolution": res_val, "verdict_resolution": res_verdict, "min_effect": min_effect,
        "arms": rows, "pairwise": pairwise, "differences": differences,
        "leader": leader["name"] if leader else None, "verdicts": verdicts, "family": family, "search_gap": gap,
        "holm": {v.b_name: p for v, p in zip(verdicts, adjusted)}, "notes": notes,
    }
    analysis["paragraph"] = paragraph(analysis)
    return analysis


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values (Holm 1979): sorted ascending, the i-th
    of m is multiplied by m - i + 1, kept monotone and capped at 1. A comparison whose
    adjusted p is under 1 - level still holds when all m are read together. NaN stays NaN."""
    order = sorted((i for i, p in enumerate(p_values) if p == p), key=lambda i: p_values[i])
    m, running = len(order), 0.0
    out = [math.nan] * len(p_values)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def _values(arms: list[ArmData], name: str) -> list[float]:
    return next(a.values for a in arms if a.name == name)


def _family(variants) -> str | None:
    kinds = {FAMILY.get(v) for v in variants}
    return kinds.pop() if len(kinds) == 1 else None


def _k_star(ks, n: int) -> int | None:
    fit = [k for k in ks if k <= n]
    return max(fit) if fit else None


def _verdict(a: dict, b: dict, arms, ks, maximize, res, min_effect, metric, n_boot) -> stats.Verdict:
    k = _k_star(ks, min(a["n"], b["n"]))
    trials = {} if k is None else {"a_trials": _values(arms, a["name"]), "b_trials": _values(arms, b["name"]), "k": k}
    return stats.verdict(a["by_seed"], b["by_seed"], names=(a["name"], b["name"]), maximize=maximize,
                         resolution=res, min_effect=min_effect, level=LEVEL, metric=metric, n_boot=n_boot, **trials)


def _family_verdict(ready, arms, ks, maximize, res, min_effect, metric, n_boot) -> dict | None:
    """The best Adam-family arm against the best SGD arm, when the experiment has both."""
    sign = 1.0 if maximize else -1.0
    best = {}
    for fam in ("Adam", "SGD"):
        members = [r for r in ready if r["family"] == fam]
        if members:
            best[fam] = max(members, key=lambda r: sign * r["verdict_mean"])
    if len(best) < 2:
        return None
    return {"adam": best["Adam"]["name"], "sgd": best["SGD"]["name"],
            "verdict": _verdict(best["Adam"], best["SGD"], arms, ks, maximize, res, min_effect, metric, n_boot)}


# --- words ------------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 4) -> str:
    """A number for the report: 4 decimals for values within [-10, 10], else 4 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}" if abs(x) < 10 else f"{x:.{digits}g}"


def signed(x: float | None) -> str:
    return "–" if x is None else ("+" if x >= 0 else "−") + fmt(abs(x))


def pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return fmt(mean) + ("" if std is None else f" ± {fmt(std)}")


def _gap_words(v: stats.Verdict) -> str:
    lo, hi = v.ci
    ci = f"CI {signed(lo)} to {signed(hi)}" if math.isfinite(lo) else "no CI from one seed"
    return f"{v.b_name} {signed(v.difference)}, {ci}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def paragraph(an: dict) -> str:
    """The verdict in plain words, with the numbers behind it and how sure it is."""
    meta, vm = an["meta"], an["verdict_metric"]
    direction = "higher is better" if an["maximize"] else "lower is better"
    rows = {r["name"]: r for r in an["arms"]}
    how = meta.get("how") or "tuned alike"
    seeds = len(an["seeds"])
    if an["leader"] is None:
        missing = [r["name"] for r in an["arms"] if not r["by_seed"]]
        return (f"Not enough evidence for a verdict: it needs the seed re-runs of at least two arms, and "
                f"{_join(missing) if missing else 'the arms'} have none yet. Run the experiment to its end "
                f"(the same command resumes it).")
    lead = rows[an["leader"]]
    margin = an["verdict_resolution"]
    split = "test" if an["test_metric"] else "validation"
    text = (f"{how[:1].upper() + how[1:]}, then re-run with {seeds} paired seed{'s' if seeds != 1 else ''}, "
            f"{lead['name']} has the best {vm} ({direction}): {pm(lead['verdict_mean'], lead['verdict_std'])} "
            f"(mean ± std over the seeds). Gaps to it, each arm minus {lead['name']}, with "
            f"{an['level']:.0%} confidence intervals:")
    groups: dict[str, list[str]] = {"A better": [], "B better": [], "tie": [], "not enough evidence": []}
    for v in an["verdicts"]:
        groups[v.label].append(_other_gap(v))
    parts = []
    if groups["A better"]:
        parts.append(f"it is better than {_join(groups['A better'])}")
    if groups["tie"]:
        parts.append(f"it ties with {_join(groups['tie'])} (the whole interval lies within the margin)")
    if groups["not enough evidence"]:
        parts.append(f"there is not enough evidence to tell it from {_join(groups['not enough evidence'])} "
                     f"(the intervals include zero or reach past the margin)")
    if groups["B better"]:
        parts.append(f"on the seeds both ran, {_join(groups['B better'])} did better")
    text += " " + "; ".join(parts) + "."
    better = [v.b_name for v in an["verdicts"] if v.label == "A better"]
    if len(an["verdicts"]) > 1 and better:
        hold = [b for b in better if an["holm"][b] < 1 - an["level"]]
        m = len(an["verdicts"])
        text += (f" Read together, these are {m} comparisons: corrected for that (Holm), "
                 + (f"the call{'s' if len(hold) > 1 else ''} against {_join(hold)} still hold{'' if len(hold) > 1 else 's'}"
                    if hold else "none of the 'better' calls holds")
                 + (f" and {'those' if len(better) - len(hold) > 1 else 'the one'} against "
                    f"{_join([b for b in better if b not in hold])} no longer {'do' if len(better) - len(hold) > 1 else 'does'}"
                    if hold and len(hold) < len(better) else "")
                 + ".")
    if margin:
        text += (f" A gap under one {split} example ({fmt(margin)}, 1/{an['verdict_size']})"
                 + (f" or under min_effect {fmt(an['min_effect'])}" if an["min_effect"] > margin else "")
                 + " never counts as a difference.")
    elif an["min_effect"]:
        text += f" A gap under min_effect {fmt(an['min_effect'])} never counts as a difference."
    else:
        text += f" The {split} set's size is unknown, so no gap is too small to count."
    fam = an["family"]
    if fam is not None:
        v = fam["verdict"]
        words = {"A better": f"{fam['adam']} is better", "B better": f"{fam['sgd']} is better",
                 "tie": "they tie", "not enough evidence": "there is not enough evidence either way"}[v.label]
        text += (f" Does Adam just need tuning? Best Adam-family arm {fam['adam']} against best SGD arm "
                 f"{fam['sgd']}: {words} ({fam['adam']} − {fam['sgd']} = {signed(v.difference)}, CI "
                 f"{signed(v.ci[0])} to {signed(v.ci[1])}, {_p(v.p_value)}).")
    gap = an["search_gap"]
    if gap is not None:
        first, second = rows[gap["first"]], rows[gap["second"]]
        if gap["gap"] == 0:
            text += (f" In the search, {gap['first']} and {gap['second']} tied for the best {an['metric']} "
                     f"({fmt(first['best'])}).")
        else:
            examples = (f": {gap['examples']:.3g} validation example{'s' if round(gap['examples'], 3) != 1 else ''} "
                        f"out of {an['val_size']}" if gap["examples"] is not None else "")
            noise = gap["examples"] is not None and gap["examples"] <= 1.0
            text += (f" In the search, the two best {an['metric']} values were {gap['first']} {fmt(first['best'])} "
                     f"and {gap['second']} {fmt(second['best'])}{examples}"
                     + (", within the noise of a single run" if noise else "") + ".")
    if seeds < 2:
        text += " With one seed per arm nothing is known about the noise: every comparison lacks evidence."
    for note in an.get("notes") or []:
        text += " " + note
    return text


def _other_gap(v: stats.Verdict) -> str:
    """The other arm's gap to the leader (other − leader), in the orientation a reader expects."""
    lo, hi = v.ci
    if not math.isfinite(lo):
        return f"{v.b_name} ({signed(-v.difference)}, one seed: no interval)"
    return f"{v.b_name} ({signed(-v.difference)}, {signed(-hi)} to {signed(-lo)})"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "no t-test with one pair"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


# --- the experiment, end to end --------------------------------------------------------------------
def analyse_experiment(exp) -> dict:
    """Read ``exp``'s studies and analyse them (``analyse``), with the run's description."""
    from optsearch.trainers.registry import eval_sizes

    base = exp.base
    sizes = eval_sizes(base.trainer.name, base.trainer.target, base.trainer.options)
    arms = collect(exp)
    an = analyse(arms, metric=base.study.metric, test_metric=exp.verdict.test_metric,
                 maximize=base.study.direction == "maximize", ks=exp.verdict.k, seeds=exp.verdict.seeds,
                 val_size=sizes.get(base.study.metric), test_size=sizes.get(exp.verdict.test_metric or ""),
                 min_effect=exp.verdict.min_effect, meta=describe(exp))
    from optsearch.search.report import trajectory

    for row in an["arms"]:  # the winner's lr and momentum / beta1 per step, for the schedules figure
        chosen = row["winner"] or (row["configs"][0] if row["configs"] else None)
        row["schedule"] = None
        if chosen and chosen.get("params") and chosen.get("build"):
            try:
                row["schedule"] = {"trial": chosen["number"], **trajectory(chosen["params"], chosen["build"])}
            except Exception:  # noqa: BLE001 - a missing curve is said in the figure, not fatal
                row["schedule"] = None
    return an


def describe(exp) -> dict:
    """How the experiment ran, in words, for the report."""
    base = exp.base
    s, p = base.study.sampler, base.study.pruner
    sampler = {"qmc": "QMC (scrambled Sobol)" if s.options.get("scramble") else "QMC (Sobol)",
               "random": "random search", "tpe": "TPE", "gp": "Gaussian-process BO"}.get(s.name, s.name)
    seed = s.options.get("seed")
    sampler += f", seed {seed}" if seed is not None else ""
    fair = s.name in ("qmc", "random") and p.name == "none"
    pruner = "no pruning" if p.name == "none" else f"{p.name} pruning"
    epochs = base.trainer.options.get("epochs")
    trainer = base.trainer.name or base.trainer.target
    how = (f"tuned alike ({base.study.n_trials} trials per arm, {sampler}, {pruner}"
           + (f", {epochs} epochs per trial" if epochs else "") + ")")
    return {
        "experiment": exp.name, "config": exp.path, "trainer": trainer, "epochs": epochs,
        "n_trials": base.study.n_trials, "sampler": sampler, "pruner": pruner, "fair": fair, "how": how,
        "top_k": exp.verdict.top_k, "storage": base.study.storage, "date": time.strftime("%Y-%m-%d %H:%M"),
        "studies": {arm: cfg.study.name for arm, cfg in exp.arms.items()},
    }


def headline_metrics(an: dict) -> dict[str, float]:
    """Per arm, the numbers an MLflow run can compare: best search value, winner's means."""
    out = {}
    for r in an["arms"]:
        key = r["name"].replace("+", "_")
        for name, v in (("best_" + an["metric"], r["best"]), (an["verdict_metric"] + "_mean", r["verdict_mean"]),
                        (an["verdict_metric"] + "_std", r["verdict_std"]), ("trials", r["n"]),
                        ("compute_s", r["seconds"] + r["rerun_seconds"])):
            if v is not None:
                out[f"{key}.{name}"] = float(v)
    return out


# --- the report ------------------------------------------------------------------------------------
FIGURES = ("expected_max.png", "pairwise.png", "reruns.png", "importance.png", "schedules.png")


def write_report(an: dict, folder: str | Path) -> Path:
    """``report.md``, its figures and ``verdict.json`` in ``folder`` (created). Returns the
    Markdown's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from optsearch.search import verdict_figures

    made = verdict_figures.draw_all(an, folder)
    path = folder / "report.md"
    path.write_text(markdown(an, made), encoding="utf-8")
    (folder / "verdict.json").write_text(json.dumps(to_json(an), indent=1, allow_nan=False), encoding="utf-8")
    return path


def to_json(an: dict) -> dict:
    """The analysis as plain JSON (no NaN: None)."""
    def clean(x):
        if isinstance(x, stats.Verdict):
            return clean(asdict(x))
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        return x

    out = clean({k: v for k, v in an.items()})
    for r in out["arms"]:
        r.pop("schedule", None)  # hundreds of points: in the figure
    return out


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(an: dict, figures: dict[str, bool] | None = None) -> str:
    figures = figures or {}
    meta, m, vm = an["meta"], an["metric"], an["verdict_metric"]
    ks = an["ks"]
    out = [f"# Verdict: {meta.get('experiment', 'experiment')}", "", an["paragraph"], ""]

    out += ["## How it was run", ""]
    if meta.get("config"):
        out.append(f"- Config `{Path(meta['config']).name}`; trainer `{meta['trainer']}`"
                   + (f", {meta['epochs']} epochs per trial" if meta.get("epochs") else "")
                   + f"; metric `{m}` ({'higher' if an['maximize'] else 'lower'} is better).")
        out.append(f"- Each arm is its own Optuna study (`{meta['experiment']}.<arm>`) with {meta['n_trials']} trials, "
                   f"sampler {meta['sampler']}, {meta['pruner']}"
                   + (": fair by default (a non-adaptive sampler, every trial trained to the end)." if meta["fair"]
                      else ": the practitioner's option (the sampler adapts to each arm's results"
                           + (", and pruned trials count in E[max_k] with their last reported value)." if
                              meta["pruner"] != "no pruning" else ")."))
                   )
        out.append("- Arms ran interleaved on the same workers (the next trial always went to the arm with the "
                   "fewest trials), so each got the same budget.")
        configs = "config" if meta["top_k"] == 1 else f"{meta['top_k']} configs"
        out.append(f"- Seed re-runs: each arm's top {configs} ran again with the same "
                   f"{len(an['seeds'])} seeds ({', '.join(str(s) for s in an['seeds'])}), in studies "
                   f"`<arm study>.reruns`. An arm's winner is the config with the best mean `{m}` over the "
                   f"seeds; the verdict compares the winners' `{vm}`, paired by seed.")
    res = []
    if an["val_size"]:
        res.append(f"validation {an['val_size']} examples (one = {fmt(an['resolution'])})")
    if an["test_metric"] and an["test_size"]:
        res.append(f"test {an['test_size']} examples (one = {fmt(1 / an['test_size'])})")
    out.append(f"- Resolution: {'; '.join(res) if res else 'unknown (the trainer does not say its split sizes)'}. "
               "A gap smaller than one example is within the noise.")
    out.append("")

    out += ["## Arms", ""]
    header = ["arm", "trials", "epochs", "compute s", f"best {m}", "E[max_1]"]
    kmax = ks[-1]
    header += [f"E[max_{kmax}]", "winner", f"winner {m}", f"winner {vm}"]
    rows = []
    for r in an["arms"]:
        w = r["winner"]
        rows.append([r["name"], str(r["n"]), str(r["epochs"]), f"{r['seconds'] + r['rerun_seconds']:.0f}",
                     fmt(r["best"]), fmt(r["at_k"].get(1, {}).get("unbiased")),
                     fmt(r["at_k"].get(kmax, {}).get("unbiased")),
                     f"trial {w['number']}" if w else "–",
                     pm(w["val_mean"], w["val_std"]) if w else "–",
                     pm(r["verdict_mean"], r["verdict_std"])])
    out.append(_table(header, rows))
    out.append("")
    out.append(f"trials: finished search trials (complete{'' if an['meta'].get('pruner') == 'no pruning' else ', pruned'}"
               " and failed by their own doing); compute s: the trials' durations summed, search and re-runs; "
               f"E[max_k]: the expected best `{m}` of k trials (unbiased estimator; k = 1 is the mean, k = trials "
               f"the best); winner values: mean ± std over the seed re-runs.")
    out.append("")

    out += ["## Expected best after k trials", ""]
    if figures.get("expected_max.png"):
        out += ["![Expected best of k trials per arm, with 95% bootstrap bands](expected_max.png)", ""]
    header = ["arm"] + [f"k={k}" for k in ks]
    out.append(f"Unbiased estimator (Tang et al. 2020), with its {an['level']:.0%} bootstrap band; – where k exceeds "
               "the arm's finished trials (no value is extrapolated):")
    out.append("")
    out.append(_table(header, [[r["name"]] + [
        (f"{fmt(r['at_k'][k]['unbiased'])} [{fmt(r['at_k'][k]['low'])}, {fmt(r['at_k'][k]['high'])}]"
         if k in r["at_k"] else "–") for k in ks] for r in an["arms"]]))
    out.append("")
    out.append("With replacement (Dodge et al. 2019), lower at k > 1 since a draw may repeat a trial:")
    out.append("")
    out.append(_table(header, [[r["name"]] + [fmt(r["at_k"][k]["dodge"]) if k in r["at_k"] else "–" for k in ks]
                               for r in an["arms"]]))
    out.append("")

    out += ["## Which search finds better values", ""]
    kfig = _figure_k(an)
    if figures.get("pairwise.png") and kfig is not None:
        out += [f"![P(best of {kfig} trials of the row's arm beats the column's)](pairwise.png)", ""]
    out.append("P(the best of k trials of the row's arm beats the best of k of the column's), ties counting half, "
               f"exact on the stored trials; {an['level']:.0%} bootstrap band in brackets.")
    names = [r["name"] for r in an["arms"]]
    for k in ks:
        cells = an["pairwise"].get(k, {})
        if not any(v for row in cells.values() for v in row.values()):
            continue
        out += ["", f"k = {k}:", ""]
        out.append(_table(["row beats column"] + names, [[a] + [
            "·" if a == b else (f"{cells[a][b]['p']:.2f} [{cells[a][b]['low']:.2f}, {cells[a][b]['high']:.2f}]"
                                if cells[a].get(b) else "–") for b in names] for a in names]))
    out.append("")

    out += ["## Seed re-runs", ""]
    if figures.get("reruns.png"):
        out += [f"![Each arm's winner: {vm} per seed, mean ± std](reruns.png)", ""]
    rows = []
    for r in an["arms"]:
        for c in r["configs"]:
            rows.append([r["name"], f"{c['rank']}", f"trial {c['number']}", fmt(c["search"]), str(len(c["val"])),
                         pm(c["val_mean"], c["val_std"]), pm(c["test_mean"], c["test_std"]) if an["test_metric"] else "–",
                         "**winner**" if c["winner"] else ""])
    out.append(_table(["arm", "rank", "config", f"search {m}", "seeds", f"re-run {m}",
                       f"re-run {an['test_metric'] or '–'}", ""], rows, "lrlrrrrl"))
    out.append("")
    if an["differences"]:
        out.append(f"Paired differences of the winners' `{vm}` (row A − B over common seeds, Student-t "
                   f"{an['level']:.0%} CI, paired t-test):")
        out.append("")
        out.append(_table(["A − B", "mean", "CI", "p", "seeds"], [
            [f"{d['a']} − {d['b']}", signed(d["mean"]),
             f"{signed(d['low'])} to {signed(d['high'])}" if d["low"] is not None else "–",
             _p(d["p"]).replace("p = ", "").replace("p < ", "< "), str(d["pairs"])] for d in an["differences"]]))
        out.append("")

    out += ["## The verdict, arm by arm", ""]
    for v in an["verdicts"]:
        corrected = (f" Holm-adjusted p over the {len(an['verdicts'])} comparisons with {v.a_name}: "
                     f"{_p(an['holm'][v.b_name]).replace('p = ', '').replace('p < ', '< ')}."
                     if len(an["verdicts"]) > 1 and not math.isnan(an["holm"][v.b_name]) else "")
        out += [f"- **{v.a_name} vs {v.b_name}: {v.label}.** {stats.render_verdict(v)}{corrected}", ""]
    family = an["family"]
    if family is not None and an["leader"] not in (family["adam"], family["sgd"]):
        v = family["verdict"]
        out += [f"- **Adam family ({v.a_name}) vs SGD ({v.b_name}): {v.label}.** {stats.render_verdict(v)}", ""]
    if not an["verdicts"]:
        out += ["Not enough evidence: fewer than two arms have seed re-runs.", ""]

    out += ["## Parameter importance", ""]
    if figures.get("importance.png"):
        out += ["![fANOVA importance of each searched knob, per arm](importance.png)", ""]
    out.append("fANOVA (Optuna's default evaluator, seeded) over each arm's complete trials: the share of the "
               "variance of the value each knob explains.")
    out.append("")
    for r in an["arms"]:
        imp = r["importances"]
        text = ", ".join(f"{short_param(k)} {v:.2f}" for k, v in list(imp.items())[:6]) if imp else "–"
        out.append(f"- {r['name']}: {text}")
    out.append("")

    out += ["## Each arm's best schedule", ""]
    if figures.get("schedules.png"):
        out += ["![lr and momentum / beta1 per step of each arm's winner](schedules.png)", ""]
    out.append("The lr and momentum (SGD) or beta1 (Adam family) at each optimizer step of each arm's winner "
               "(its top search config when it has no re-runs), rebuilt through the builders the trials used.")
    out.append("")

    out += ["## Search spaces", ""]
    for r in an["arms"]:
        out += [f"**{r['name']}**", "", "```", *r["space"], "```", ""]
    if meta.get("config"):
        out += ["---", f"Written {meta['date']} by `optsearch compare {Path(meta['config']).name}` from `{meta['storage']}`.",
                ""]
    return "\n".join(out)


def short_param(name: str) -> str:
    """``adamw.beta1.one_minus`` -> ``1-beta1``; ``sgdr.T_0`` stays; the variant prefix goes."""
    parts = name.split(".")
    one_minus = parts[-1] == "one_minus"
    if one_minus:
        parts = parts[:-1]
    from optsearch.spaces.optimizers import VARIANTS

    if len(parts) > 1 and parts[0] in VARIANTS:
        parts = parts[1:]
    text = ".".join(parts)
    return f"1-{text}" if one_minus else text


def _figure_k(an: dict) -> int | None:
    """The k the pairwise figure shows: the largest listed k that every arm's trials reach."""
    ns = [r["n"] for r in an["arms"] if r["n"]]
    return _k_star(an["ks"], min(ns)) if ns else None


# --- the terminal -----------------------------------------------------------------------------------
def print_summary(an: dict, console=None, folder: str | None = None) -> None:
    """The summary table (fits 80 columns) and the verdict paragraph."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m, vm = an["metric"], an["verdict_metric"]
    seeds = len(an["seeds"])
    table = Table(title=f"experiment {an['meta'].get('experiment', '')}", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)  # 80 columns leave the arm 20 (ARM_NAME_MAX)
    table.add_column("arm", overflow="fold")
    table.add_column("trials", justify="right", no_wrap=True)
    table.add_column(f"best\n{m}", justify="right", no_wrap=True)
    table.add_column(f"winner {m}\n{seeds} seeds", justify="right", no_wrap=True)
    table.add_column(f"winner {vm}\n{seeds} seeds", justify="right", no_wrap=True)
    table.add_column("compute\ns", justify="right", no_wrap=True)
    lead = an["leader"]
    for r in an["arms"]:
        w = r["winner"]
        table.add_row(f"[bold]{r['name']}[/]" if r["name"] == lead else r["name"], str(r["n"]), fmt(r["best"]),
                      pm(w["val_mean"], w["val_std"]) if w else "–", pm(r["verdict_mean"], r["verdict_std"]),
                      f"{r['seconds'] + r['rerun_seconds']:.0f}")
    console.print(table)
    console.print(an["paragraph"])
    if folder:
        console.print(f"report: {Path(folder) / 'report.md'}", soft_wrap=True)
