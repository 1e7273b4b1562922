"""Confidence intervals, paired tests and seed aggregation against textbook cases."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from opencir.cli import main
from opencir.eval.evaluate import evaluate
from opencir.eval.stats import paired_test, summarize
from opencir.eval.tables import join_worlds, load_row, markdown_table
from tests.test_evaluate import GoodModel, ImageOnlyModel, make_split


def _hits(n_hits: int, n: int) -> np.ndarray:
    values = np.zeros(n)
    values[:n_hits] = 1.0
    return values


def test_binomial_interval_matches_the_normal_approximation() -> None:
    # 300 hits in 1000 queries: p = 0.3, SE = sqrt(0.3 * 0.7 / 1000) = 1.449 points.
    s = summarize(_hits(300, 1000))
    half_width = 1.959964 * math.sqrt(0.3 * 0.7 / 1000) * 100
    assert s.mean == pytest.approx(30.0)
    assert s.low == pytest.approx(30.0 - half_width, abs=0.35)
    assert s.high == pytest.approx(30.0 + half_width, abs=0.35)
    assert s.runs == 1 and s.queries == 1000 and s.sd is None


def test_interval_narrows_with_more_queries_and_is_reproducible() -> None:
    small, large = summarize(_hits(30, 100)), summarize(_hits(300, 1000))
    assert (large.high - large.low) < (small.high - small.low) / 2.5
    assert summarize(_hits(30, 100)) == small  # seeded resampling


def test_identical_rows_differ_by_exactly_zero() -> None:
    values = np.random.default_rng(0).random(500)
    test = paired_test(values, values)
    assert (test.delta, test.low, test.high, test.p_value) == (0.0, 0.0, 0.0, 1.0)


def _exact_mcnemar(wins: int, losses: int) -> float:
    n, k = wins + losses, min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_paired_p_value_on_hits_is_mcnemars_exact_test() -> None:
    # 200 queries: the row alone right on 30, the baseline alone right on 10.
    row, base = np.zeros(200), np.zeros(200)
    row[:30] = 1
    base[30:40] = 1
    row[40:120] = base[40:120] = 1
    test = paired_test(row, base, resamples=40_000)
    assert test.delta == pytest.approx(10.0)
    assert test.p_value == pytest.approx(_exact_mcnemar(30, 10), abs=0.0015)
    assert test.low < 10.0 < test.high and test.low > 0


def test_no_difference_is_not_significant() -> None:
    row, base = np.zeros(200), np.zeros(200)
    row[:20], base[20:40] = 1, 1  # 20 wins, 20 losses
    test = paired_test(row, base)
    assert test.delta == 0.0 and test.p_value > 0.5 and test.low < 0 < test.high


def test_runs_give_mean_sd_and_a_wider_interval() -> None:
    rng = np.random.default_rng(1)
    runs = np.stack([(rng.random(1000) < p).astype(float) for p in (0.2, 0.3, 0.4)])
    pooled = summarize(runs)
    means = runs.mean(axis=1) * 100
    assert pooled.mean == pytest.approx(means.mean())
    assert pooled.sd == pytest.approx(means.std(ddof=1))
    one = summarize(runs[1])
    assert (pooled.high - pooled.low) > 2 * (one.high - one.low)  # seeds disagree a lot


def test_several_runs_p_value_carries_the_seed_variation() -> None:
    rng = np.random.default_rng(2)
    base = np.stack([(rng.random(2000) < 0.30).astype(float) for _ in range(3)])
    scattered = np.stack([(rng.random(2000) < p).astype(float) for p in (0.22, 0.33, 0.44)])
    test = paired_test(scattered, base)
    # per query, the run-averaged rows differ by about 3 points over 2,000 queries: a test
    # blind to the seeds calls that significant; the seeds scatter by 11 points, so it is not
    blind = paired_test(scattered.mean(axis=0), base.mean(axis=0))
    assert blind.p_value < 0.01
    assert test.low < 0 < test.high and test.p_value > 0.2
    steady = np.stack([(rng.random(2000) < p).astype(float) for p in (0.40, 0.41, 0.42)])
    clear = paired_test(steady, base)
    assert clear.low > 0 and clear.p_value < 0.001
    assert paired_test(base, base).p_value == 1.0
    shared = paired_test(scattered, base, test="sign-flip")  # runs as one shared design
    assert shared.p_value < 0.01 and (shared.low, shared.high) == (test.low, test.high)
    with pytest.raises(ValueError, match="test must be one of"):
        paired_test(scattered, base, test="t-test")


def test_several_runs_p_value_agrees_with_the_interval() -> None:
    rng = np.random.default_rng(3)
    base = np.stack([(rng.random(800) < 0.30).astype(float) for _ in range(3)])
    for shift in (0.0, 0.01, 0.02, 0.03, 0.04, 0.06):
        row = np.stack(
            [(rng.random(800) < 0.30 + shift + d).astype(float) for d in (-0.01, 0, 0.01)]
        )
        test = paired_test(row, base)
        assert (test.p_value < 0.05) == (test.low > 0 or test.high < 0), shift


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_test(np.ones(10), np.ones(11))
    with pytest.raises(ValueError, match="finite"):
        summarize([0.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        summarize([1.0, 0.0], level=95)
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_per_query_values_reproduce_every_metric(tmp_path) -> None:
    split = make_split()
    result = evaluate(GoodModel(), split, progress=False)
    assert result.query_ids == [q.id for q in split.queries]
    assert set(result.per_query) == set(result.metrics)
    for metric, values in result.per_query.items():
        assert np.mean(values) * 100 == pytest.approx(result.metrics[metric], abs=1e-4)
    groups = np.array(result.query_groups)
    for group, metrics in result.per_group.items():
        chosen = np.asarray(result.per_query["R@1"])[groups == group]
        assert chosen.mean() * 100 == pytest.approx(metrics["R@1"])


def _save(result, path) -> str:
    result.to_json(path)
    return str(path)


def test_results_cli_prints_intervals_and_paired_tests(tmp_path, capsys) -> None:
    split = make_split()
    good = _save(evaluate(GoodModel(), split, progress=False), tmp_path / "good.json")
    noisy = [
        _save(evaluate(GoodModel(noise=n), split, progress=False), tmp_path / f"n{n}.json")
        for n in (0.5, 0.6)
    ]
    image = _save(evaluate(ImageOnlyModel(), split, progress=False), tmp_path / "img.json")
    args = ["results", f"image-only={image}", f"good={good}", f"noisy={noisy[0]}",
            f"noisy={noisy[1]}", "--metrics", "R@1,R@5", "--baseline", "image-only"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = summarize(json.loads(Path(good).read_text())["per_query"]["R@1"])
    assert f"| good | {summary.mean:.2f} [{summary.low:.2f}, {summary.high:.2f}]" in out
    assert "| noisy (2 runs) | " in out and " ± " in out
    assert "Paired difference to image-only" in out
    paired_rows = out.split("Paired difference")[1]
    assert "| good | +" in paired_rows and ("p=" in paired_rows or "p<" in paired_rows)
    assert "| image-only |" not in paired_rows


def test_rows_on_different_queries_are_not_paired(tmp_path) -> None:
    split = make_split()
    other = dataclasses.replace(split, queries=split.queries[:20])
    a = _save(evaluate(GoodModel(), split, progress=False), tmp_path / "a.json")
    b = _save(evaluate(GoodModel(), other, progress=False), tmp_path / "b.json")
    with pytest.raises(ValueError, match="not on the same queries"):
        load_row("seeds", [a, b])
    table = [load_row("a", [a]), load_row("b", [b])]
    with pytest.raises(ValueError, match="not on the same queries"):
        markdown_table(table, ["R@1"], baseline="a")
    with pytest.raises(ValueError, match="baseline 'c'"):
        markdown_table(table, ["R@1"], baseline="c")


def test_worlds_joined_by_plus_are_one_run_over_all_their_queries(tmp_path, capsys) -> None:
    split = make_split()
    other = dataclasses.replace(split, queries=split.queries[:20])
    results = {}
    for name, model in (("good", GoodModel(noise=0.5)), ("image", ImageOnlyModel())):
        results[name] = [
            _save(evaluate(model, world, progress=False), tmp_path / f"{name}-{i}.json")
            for i, world in enumerate((split, other))
        ]
    joined = join_worlds(results["good"])
    hits = [json.loads(Path(p).read_text())["per_query"]["R@1"] for p in results["good"]]
    assert joined.per_query["R@1"] == hits[0] + hits[1]
    assert len(joined.query_ids) == len(split.queries) + 20
    assert joined.metrics["R@1"] == pytest.approx(100 * np.mean(hits[0] + hits[1]))
    rows = ["image=" + "+".join(results["image"]), "good=" + "+".join(results["good"])]
    args = ["results", *rows, "--metrics", "R@1", "--baseline", "image"]
    assert main(args) == 0
    paired = capsys.readouterr().out.split("Paired difference")[1]
    test = paired_test(joined.per_query["R@1"], join_worlds(results["image"]).per_query["R@1"])
    assert f"| good | {test.delta:+.2f} [{test.low:+.2f}, {test.high:+.2f}]" in paired
    with pytest.raises(ValueError, match="not on the same queries"):
        one_world = load_row("image", [results["image"][0]])
        markdown_table([one_world, load_row("good", [results["good"]])], ["R@1"], baseline="image")
