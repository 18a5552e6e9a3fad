"""The verdict's analysis, paragraph, report and terminal table, on synthetic arms of known
distributions (no Ray, no storage): the numbers a person reads come from these functions."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from rich.console import Console

from optsearch.search import stats
from optsearch.search.verdict import ArmData, analyse, fmt, markdown, pm, print_summary, write_report

SEEDS = (11, 12, 13, 14, 15)


def synthetic_arm(name: str, center: float, rng: np.random.Generator, n: int = 20, seed_effect=None,
                  spread: float = 0.02, noise: float = 0.003, variant: str = "adamw") -> ArmData:
    """An arm whose search values are ~ N(center - 0.05, spread) capped below center, and whose top 3
    configs re-run on SEEDS with value center + seed effect (shared across arms: paired) + noise."""
    values = list(np.minimum(rng.normal(center - 0.05, spread, size=n), center - 1e-3))
    top = sorted(range(n), key=lambda i: -values[i])[:3]
    configs, reruns = {}, {}
    for rank, i in enumerate(top):
        configs[i] = {"value": values[i], "params": None, "build": None}
        shift = -0.004 * rank  # the search's best is also the best config
        reruns[i] = {"val": {s: center + shift + seed_effect[s] + rng.normal(0, noise) for s in SEEDS},
                     "test": {s: center + shift + seed_effect[s] + rng.normal(0, noise) for s in SEEDS}}
    return ArmData(name=name, values=values, counts={"complete": n}, epochs=10 * n, seconds=1.5 * n,
                   variants=(variant,), space=["optimizer: " + variant], configs=configs, reruns=reruns)


def run(arms, **kw):
    defaults = {"metric": "val_acc", "test_metric": "test_acc", "maximize": True, "ks": (1, 2, 4, 8, 32),
                "seeds": SEEDS, "val_size": 287, "test_size": 359, "n_boot": 300,
                "meta": {"how": "tuned alike (20 trials per arm)"}}
    return analyse(arms, **{**defaults, **kw})


def seed_effects(rng):
    return {s: rng.normal(0, 0.004) for s in SEEDS}


def test_a_dominating_arm_is_called_better():
    rng = np.random.default_rng(0)
    effect = seed_effects(rng)
    an = run([synthetic_arm("A", 0.95, rng, seed_effect=effect), synthetic_arm("B", 0.90, rng, seed_effect=effect,
                                                                               variant="sgd")])
    assert an["leader"] == "A"
    [v] = an["verdicts"]
    assert (v.label, v.winner, v.a_name, v.b_name) == ("A better", "A", "A", "B")
    assert v.ci[0] > 0 and v.difference > 1 / 359
    assert "A has the best test_acc" in an["paragraph"] and "it is better than B" in an["paragraph"]
    assert "not enough evidence" not in an["paragraph"]
    assert an["family"]["verdict"].label == "A better"  # the Adam-family arm against the SGD one
    assert "Does Adam just need tuning?" in an["paragraph"]


def test_equal_arms_are_not_enough_evidence():
    rng = np.random.default_rng(1)
    effect = seed_effects(rng)
    an = run([synthetic_arm("A", 0.93, rng, seed_effect=effect), synthetic_arm("B", 0.93, rng, seed_effect=effect)])
    [v] = an["verdicts"]
    assert v.label == "not enough evidence" and v.winner is None
    assert v.ci[0] < 0 < v.ci[1]
    assert "not enough evidence to tell it from B" in an["paragraph"]
    assert "is better than" not in an["paragraph"]


def test_a_gap_under_one_example_with_a_tight_interval_is_a_tie():
    rng = np.random.default_rng(2)
    effect = seed_effects(rng)
    a = synthetic_arm("A", 0.93, rng, seed_effect=effect, noise=1e-5)
    b = synthetic_arm("B", 0.93, rng, seed_effect=effect, noise=1e-5)
    an = run([a, b], test_size=100)  # one example = 0.01: far wider than the noise
    assert an["verdicts"][0].label == "tie" and "it ties with B" in an["paragraph"]


def test_report_numbers_against_the_trials():
    rng = np.random.default_rng(3)
    effect = seed_effects(rng)
    arms = [synthetic_arm("A", 0.95, rng, seed_effect=effect), synthetic_arm("B", 0.9, rng, n=6, seed_effect=effect)]
    an = run(arms)
    for arm, row in zip(arms, an["arms"]):
        n = len(arm.values)
        assert row["n"] == n
        assert row["at_k"][1]["unbiased"] == pytest.approx(np.mean(arm.values))  # E[max_1]: the mean
        curve = {c["k"]: c for c in row["curve"]}
        assert list(curve) == list(range(1, n + 1))  # never a k beyond the arm's trials
        assert curve[n]["unbiased"] == pytest.approx(max(arm.values))  # E[max_n]: the best
        assert row["best"] == max(arm.values)
        assert 32 not in row["at_k"] and (8 in row["at_k"]) == (n >= 8)
        for k in (2, 3):  # the unbiased estimator is the average best over all k-subsets
            subsets = list(itertools.combinations(arm.values, k))
            assert curve[k]["unbiased"] == pytest.approx(sum(map(max, subsets)) / len(subsets))
            assert curve[k]["dodge"] == pytest.approx(stats.expected_max_dodge(arm.values, k))
        winner = row["winner"]
        assert winner["number"] == max(arm.reruns, key=lambda i: np.mean(list(arm.reruns[i]["val"].values())))
        assert row["verdict_mean"] == pytest.approx(np.mean(list(arm.reruns[winner["number"]]["test"].values())))
        assert row["verdict_std"] == pytest.approx(np.std(list(arm.reruns[winner["number"]]["test"].values()), ddof=1))
    assert an["pairwise"][8]["A"]["B"] is None  # B has 6 trials: no k = 8 for that pair
    p = an["pairwise"][4]["A"]["B"]["p"]
    assert p == pytest.approx(stats.p_best_of_k_beats(arms[0].values, arms[1].values, 4, n_boot=0).p)
    assert an["pairwise"][4]["B"]["A"]["p"] == pytest.approx(1 - p)
    text = markdown(an)
    row_b = next(line for line in text.splitlines() if line.startswith("| B | ") and "[" in line)
    assert row_b.count("–") == 2  # k = 8 and k = 32: beyond B's 6 trials, no value
    assert fmt(an["arms"][0]["at_k"][1]["unbiased"]) in text
    assert pm(an["arms"][0]["verdict_mean"], an["arms"][0]["verdict_std"]) in text


def test_the_winner_is_chosen_on_validation_never_on_test():
    rng = np.random.default_rng(4)
    effect = seed_effects(rng)
    arm = synthetic_arm("A", 0.95, rng, seed_effect=effect)
    first, second = sorted(arm.configs, key=lambda i: -arm.configs[i]["value"])[:2]
    arm.reruns[second]["test"] = {s: 0.999 for s in SEEDS}  # the best test values, not the best val
    an = run([arm, synthetic_arm("B", 0.9, rng, seed_effect=effect)])
    assert an["arms"][0]["winner"]["number"] == first


def test_no_verdict_without_reruns():
    rng = np.random.default_rng(5)
    arms = [synthetic_arm("A", 0.95, rng, seed_effect=seed_effects(rng)), ArmData("B", [0.5, 0.6])]
    an = run(arms)
    assert an["leader"] is None and an["verdicts"] == []
    assert an["paragraph"].startswith("Not enough evidence for a verdict") and "B" in an["paragraph"]
    assert "Not enough evidence" in markdown(an)


def test_terminal_summary_fits_80_columns_and_cuts_no_number():
    rng = np.random.default_rng(6)
    effect = seed_effects(rng)
    names = ["sgd", "adam_l2", "adamw", "amsgrad", "adamw+sgdr", "adamw+onecycle", "muon", "sf_adamw",
             "a-20-character-arm-n"]
    an = run([synthetic_arm(n, 0.9 + 0.005 * i, rng, seed_effect=effect) for i, n in enumerate(names)])
    console = Console(width=80, record=True, force_terminal=False)
    print_summary(an, console, "report-x")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "val_acc" in text and "test_acc" in text  # names the metric
    for r in an["arms"]:
        assert pm(r["verdict_mean"], r["verdict_std"]) in text  # whole numbers, not cut
        assert pm(r["winner"]["val_mean"], r["winner"]["val_std"]) in text
        assert any(line.startswith(r["name"] + " ") for line in text.splitlines())  # whole, on one line
    assert an["paragraph"].split()[0] in text


def test_report_files_are_small_pngs_linked_from_the_markdown(tmp_path):
    rng = np.random.default_rng(7)
    effect = seed_effects(rng)
    an = run([synthetic_arm(n, 0.9 + 0.01 * i, rng, seed_effect=effect) for i, n in enumerate(["x", "y", "z"])])
    for r in an["arms"]:
        r["importances"] = {"adamw.lr": 0.7, "adamw.beta1.one_minus": 0.3}
        r["schedule"] = {"trial": 0, "lr_step": [(0, 0.1), (50, 0.05), (99, 0.0)], "momentum_step": [(0, 0.9), (99, 0.9)]}
    path = write_report(an, tmp_path / "rep")
    text = path.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(linked) == {"expected_max.png", "pairwise.png", "reruns.png", "importance.png", "schedules.png"}
    for name in linked:
        png = tmp_path / "rep" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 80_000
    assert "1-beta1 0.30" in text  # importance names: the variant prefix dropped, 1 - x said
    assert (tmp_path / "rep" / "verdict.json").is_file()


def test_holm_adjusts_for_the_number_of_comparisons():
    from optsearch.search.verdict import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    nan = holm([float("nan"), 0.02])
    assert np.isnan(nan[0]) and nan[1] == pytest.approx(0.02)  # one real comparison: unchanged
    rng = np.random.default_rng(8)
    effect = seed_effects(rng)
    an = run([synthetic_arm("A", 0.96, rng, seed_effect=effect), synthetic_arm("B", 0.90, rng, seed_effect=effect),
              synthetic_arm("C", 0.91, rng, seed_effect=effect)])
    assert [v.label for v in an["verdicts"]] == ["A better", "A better"]
    assert all(p < 0.05 for p in an["holm"].values())
    assert "2 comparisons: corrected for that (Holm), the calls against B and C still hold." in an["paragraph"]


def test_without_test_values_the_verdict_is_on_validation_and_says_so():
    rng = np.random.default_rng(9)
    effect = seed_effects(rng)
    arms = [synthetic_arm("A", 0.95, rng, seed_effect=effect), synthetic_arm("B", 0.90, rng, seed_effect=effect)]
    for a in arms:
        for runs in a.reruns.values():
            runs["test"] = {}
    an = run(arms)
    assert an["verdict_metric"] == "val_acc" and an["verdicts"][0].label == "A better"
    assert an["verdict_resolution"] == pytest.approx(1 / 287)
    assert "reported no test_acc, so the verdict is on val_acc" in an["paragraph"]
