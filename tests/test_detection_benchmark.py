"""Smoke tests of the detection benchmark (benchmarks/detection): label rule, live runs, replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.detection.cache import TraceCache
from benchmarks.detection.detectors import Firing, all_detectors, fire, product
from benchmarks.detection.evaluate import blowup_onset, evaluate, format_families, format_table, score
from benchmarks.detection.labels import Verdict, label_run, stopped_short
from benchmarks.detection.scenarios import scenarios
from benchmarks.detection.spec import make_spec
from benchmarks.detection.suite import label_suite, load_shared_dev, load_split
from benchmarks.detection.trace import OBSERVATION_FIELDS, Trace
from benchmarks.detection.train import train

L0 = C = 2.3
N = 300


def _learns(to: float = 0.2, by: int = 50) -> np.ndarray:
    """A loss falling linearly from chance to ``to`` over ``by`` steps, then flat."""
    return np.concatenate([np.linspace(C, to, by), np.full(N - by, to)])


def _with(loss: np.ndarray, start: int, value: float, stop: int = N) -> np.ndarray:
    out = loss.copy()
    out[start:stop] = value
    return out


LABEL_CASES = {
    "learns": (_learns(), None, True, ("healthy", None)),
    "spike that recovers": (_with(_learns(), 100, 50.0, 101), None, True, ("healthy", None)),
    "NaN after learning": (_with(_learns(), 150, np.nan), None, True, ("diverged", 150)),
    "relapse to chance": (_with(_learns(), 200, C), None, True, ("diverged", 200)),
    "explodes at once, then chance": (_with(np.full(N, C), 5, 50.0, 8), None, True, ("diverged", 5)),
    "non-finite gradient, never learns": (np.full(N, C), 40, True, ("diverged", 40)),
    "flat at chance": (np.full(N, C), None, True, ("collapsed", None)),
    "flat, no healthy twin": (np.full(N, C), None, False, ("ambiguous", None)),
    "half learned": (np.full(N, 0.9 * C), None, True, ("ambiguous", None)),
}


@pytest.mark.parametrize("case", LABEL_CASES)
def test_label_rule(case: str) -> None:
    loss, bad_grad_step, twin, expected = LABEL_CASES[case]
    nonfinite = np.zeros(N, dtype=np.int64)
    if bad_grad_step is not None:
        nonfinite[bad_grad_step] = 1
    verdict = label_run(loss, nonfinite, L0, C, task_learns=twin)
    assert (verdict.label, verdict.t_div) == expected


def test_label_rule_reproduces_shared_dev_labels() -> None:
    for given in load_shared_dev():
        a = given.arrays
        ours = label_run(a["loss"], a["n_nonfinite"], given.init_loss, given.chance_loss)
        assert ours == given.verdict, given.name


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> list[Trace]:
    """The quick split, trained live (one process) into a temporary cache."""
    cache = TraceCache(Path(tmp_path_factory.mktemp("traces")))
    return load_split("quick", jobs=1, cache=cache)


def test_quick_scenarios_get_their_intended_labels(quick: list[Trace]) -> None:
    intended = {"h": "healthy", "d": "diverged", "c": "collapsed"}
    assert [t.label for t in quick] == [intended[t.name[0]] for t in quick]
    assert any(not np.isfinite(t.arrays["loss"]).all() for t in quick if t.label == "diverged")


def test_default_detector_fires_on_divergence_not_on_healthy(quick: list[Trace]) -> None:
    for t in quick:
        if t.label == "diverged":
            assert t.live_fire is not None, t.name
        if t.label == "healthy":
            assert t.live_fire is None, t.name


def test_training_is_deterministic(quick: list[Trace]) -> None:
    again = train(quick[0].spec)
    for k, v in quick[0].arrays.items():
        np.testing.assert_array_equal(again.arrays[k], v, err_msg=k)
    assert again.init_loss == quick[0].init_loss


def test_replay_reproduces_live_fire_step(quick: list[Trace]) -> None:
    replay = product()
    assert any(t.live_fire is not None for t in quick) and any(t.live_fire is None for t in quick)
    for t in quick:
        assert fire(replay, t).escalated == t.live_fire, t.name


def test_replay_reproduces_live_fire_step_when_clipping() -> None:
    """Clipping via ``monitor.clip_grad_norm_`` or ``watch(max_norm=)``: same pre-clip trace.
    (An LR bug at step 60 makes sure the run escalates.)"""
    runs = [
        train(
            make_spec(
                optimizer="sgd", lr=0.08, width=64, clip=1.0, clip_via=via, steps=120,
                schedule="step", step_every=60, step_gamma=10.0,
            )
        )
        for via in ("monitor", "watch")
    ]  # fmt: skip
    for t in runs:
        assert t.arrays["grad_norm"].max() > 1.0  # the pre-clip norm is what is recorded
        assert t.live_fire is not None and fire(product(), t).escalated == t.live_fire
    np.testing.assert_array_equal(runs[0].arrays["grad_norm"], runs[1].arrays["grad_norm"])


def test_cache_is_reused_and_table_prints(quick: list[Trace], tmp_path: Path) -> None:
    cache = TraceCache(tmp_path)
    for t in quick:
        cache.put(t)
    again = load_split("quick", cache=TraceCache(tmp_path), jobs=1)  # would train on a miss
    for a, b in zip(again, quick, strict=True):
        np.testing.assert_array_equal(a.arrays["grad_norm"], b.arrays["grad_norm"])
    results = {name: evaluate(again, det) for name, det in all_detectors().items()}
    table = format_table(results)
    pruned_rows = sum(m.prune != m.escalate for m in results.values())  # reference rules prune where they fire
    assert table.count("\n") == len(all_detectors()) + pruned_rows + 1
    families = format_families(again, [fire(product(), t) for t in again])
    assert families.count("\n") == len({t.family for t in again}) + 1 and "healthy pruned" in families


def test_product_options_are_validated() -> None:
    with pytest.raises(TypeError, match="not_an_option"):
        product(not_an_option=1)
    with pytest.raises(ValueError, match="`patience` must be an int >= 1"):
        product(patience=0)


def test_splits_differ_in_configs_and_seeds() -> None:
    dev, test = scenarios("dev"), scenarios("test")
    assert not {n for n, _ in dev} & {n for n, _ in test}
    strip = [{k: v for k, v in s.items() if k != "seed"} for _, s in dev]
    assert all({k: v for k, v in s.items() if k != "seed"} not in strip for _, s in test)
    assert not {s["seed"] for _, s in dev} & {s["seed"] for _, s in test}


def test_collapsed_needs_a_healthy_twin(quick: list[Trace]) -> None:
    alone = [t for t in quick if t.label == "collapsed"]
    copies = [Trace(**{**vars(t), "verdict": None}) for t in alone]
    label_suite(copies)
    assert [t.label for t in copies] == ["ambiguous"] * len(copies)


FINETUNE_CASES = {
    # L0 = 0.1 (the pretrained level), chance 2.3: forgetting is the loss doubled (0.2)
    "improves a few %": (np.full(N, 0.095), ("healthy", None)),
    "doubles and stays": (np.concatenate([[0.1], np.full(N - 1, 0.3)]), ("diverged", 0)),
    "kicked, then recovers below its start": (np.concatenate([[0.1], np.full(49, 0.5), np.full(N - 50, 0.09)]), ("healthy", None)),
    "neither better nor worse": (np.full(N, 0.12), ("ambiguous", None)),
}


@pytest.mark.parametrize("case", FINETUNE_CASES)
def test_label_rule_for_fine_tunes(case: str) -> None:
    loss, expected = FINETUNE_CASES[case]
    verdict = label_run(loss, np.zeros(N, dtype=np.int64), 0.1, C, finetune=True)
    assert (verdict.label, verdict.t_div) == expected


def test_label_rule_compares_medians_with_medians_for_skewed_batch_losses() -> None:
    """MSE over 2 examples: a dead run's median batch loss is ~0.69 of its mean (ln 2). Without
    the shape ratio it looks learned (below 0.85 of chance) by its noise alone."""
    dead = np.full(N, np.log(2))  # the running median of a dead run's batch losses, chance (mean) 1.0
    assert label_run(dead, np.zeros(N), 1.0, 1.0).label == "healthy"
    assert label_run(dead, np.zeros(N), 1.0, 1.0, median_ratio=np.log(2)).label == "collapsed"


def test_prunes_are_scored_apart_from_escalations(quick: list[Trace]) -> None:
    escalate_only = [Firing(10, None) if t.label != "healthy" else Firing(None, None) for t in quick]
    m = score(quick, escalate_only)
    assert m.escalate.caught == 1.0 and m.prune.caught == 0.0
    assert m.escalate.collapse_recall == 1.0 and m.prune.collapse_recall == 0.0


def test_extended_splits_differ_in_configs_and_seeds_and_keep_a_holdout() -> None:
    dev, test, holdout = scenarios("ext-dev"), scenarios("ext-test"), scenarios("ext-holdout")
    assert not {n for n, _ in dev} & {n for n, _ in test}
    assert {n for n, _ in holdout} == {n for n, _ in dev} | {n for n, _ in test}
    seeds = [{s["seed"] for _, s in split} for split in (dev, test, holdout)]
    assert not seeds[0] & seeds[1] and not (seeds[0] | seeds[1]) & seeds[2]
    assert any(s["pretrain_steps"] for _, s in dev) and any(s["steps"] >= 1000 for _, s in dev)


@pytest.mark.parametrize(("first", "later", "others"), [
    ("holdout", ("holdout2", "holdout3", "holdout4"), ("dev", "test")),
    ("ext-holdout", ("ext-holdout2", "ext-holdout3", "ext-holdout4"), ("ext-dev", "ext-test")),
])  # fmt: skip
def test_later_holdouts_hold_every_variant_with_seeds_of_their_own(
    first: str, later: tuple[str, ...], others: tuple[str, ...]
) -> None:
    used = {s["seed"] for split in (first, *others) for _, s in scenarios(split)}
    for split in later:
        new = scenarios(split)
        assert [n for n, _ in new] == [n for n, _ in scenarios(first)]
        seeds = {s["seed"] for _, s in new}
        assert not seeds & used, split
        used |= seeds


# ---------------------------------------------------------------------------- issue 18, third pass
def _synthetic(name: str, loss: np.ndarray, *, task: str = "cancer", init: float = 0.69, chance: float = 0.66) -> Trace:
    """A replayable trace from a loss curve (norms steady, every tensor alive)."""
    n = len(loss)
    given = {"step": np.arange(n), "grad_norm": np.ones(n), "loss": np.asarray(loss, dtype=np.float64)}
    arrays = {f.name: given.get(f.name, np.full(n, f.default)) for f in OBSERVATION_FIELDS}
    spec = make_spec(task=task, steps=n)
    return Trace(name=name, split="blowup-dev", spec=spec, init_loss=init, chance_loss=chance, n_params=1, arrays=arrays)


def _curve(final: float, n: int = 400, *, frozen_from: int = 60) -> np.ndarray:
    """0.69 falling to ``final`` by ``frozen_from``, then flat, with a little batch noise."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    level = np.where(t < frozen_from, 0.69 * (final / 0.69) ** (t / frozen_from), final)
    return level * np.exp(rng.normal(0, 0.05, n))


def test_a_run_frozen_far_short_of_its_twin_is_collapsed_and_one_close_to_it_or_still_learning_is_healthy() -> None:
    """The label of a run that beat chance but stopped far short of its task (issue 18's
    breast-cancer run frozen at 0.3 while its twin reaches 0.02), applied to every run alike."""
    assert stopped_short(_curve(0.3), 0.66, 0.02)
    assert not stopped_short(_curve(0.05), 0.66, 0.02)  # most of the way (in orders of magnitude)
    still = np.concatenate([_curve(0.3, 200), 0.3 * (0.05 / 0.3) ** (np.arange(200) / 200)])
    assert not stopped_short(still, 0.66, 0.02)  # far short, but still falling: a slow learner
    suite = [_synthetic("twin", _curve(0.02)), _synthetic("frozen", _curve(0.3)), _synthetic("near", _curve(0.04))]
    label_suite(suite)
    assert [t.label for t in suite] == ["healthy", "collapsed", "healthy"]
    alone = [_synthetic("frozen", _curve(0.3))]  # its own twin: nothing to fall short of
    label_suite(alone)
    assert alone[0].label == "healthy"


def test_a_burst_of_healthy_run_is_an_excursion_escalation_and_a_relapse_is_unexplained() -> None:
    """``Firing.unexplained``: a healthy run escalated only on its own blow-up (5x its start, 3
    steps in a row) is told what happened; the family table counts it apart."""
    burst = _curve(0.05, 300)
    burst[200:204] = 6.0  # 9x the start
    fired = fire(product(), _synthetic("burst", burst))
    assert fired.escalated == 202 and fired.pruned is None and fired.unexplained is None
    relapse = _curve(0.05, 300)
    relapse[150:] = 0.69
    fired = fire(product(), _synthetic("relapse", relapse))
    assert fired.escalated is not None and fired.unexplained == fired.escalated
    runs = [_synthetic("h_x-0", burst), _synthetic("h_x-1", relapse)]
    for t in runs:
        t.verdict = Verdict("healthy")
    row = format_families(runs, [Firing(202, None, None), Firing(160, None, 160)]).splitlines()[-1]
    assert [c.strip() for c in row.split("|")[2:5]] == ["2/2", "1/2", "0/2"]  # escalated, unexplained, pruned


def test_a_blow_up_is_counted_from_the_start_measured_over_8_batches_not_one_lucky_batch() -> None:
    loss = np.full(100, 1.0)
    loss[0] = 0.1  # a lucky first batch of 2: 3 ordinary ones are 10x it
    assert blowup_onset(_synthetic("noise", loss, init=1.0, chance=1.0)) is None
    loss[50:53] = 6.0
    assert blowup_onset(_synthetic("blow-up", loss, init=1.0, chance=1.0)) == 50


def test_the_fresh_blow_up_holdout_holds_every_variant_on_seeds_of_its_own() -> None:
    used: set[int] = set()
    first = [n for n, _ in scenarios("blowup-dev")]
    for split in ("blowup-dev", "blowup-holdout", "blowup-holdout2", "blowup-holdout3", "blowup-holdout4"):
        named = scenarios(split)
        assert [n for n, _ in named] == first
        seeds = {s["seed"] for _, s in named}
        assert not seeds & used, split
        used |= seeds
    assert {"h_late_burst", "d_late_blowup"} <= {n.rsplit("-", 1)[0] for n in first}
