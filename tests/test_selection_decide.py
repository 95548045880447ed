"""The selection rule (cgdml.selection.decide): the lowest score, ties within one standard error reported; grid edges; the record
and its one-line note, on synthetic score tables."""
import json

import numpy as np

from cgdml.selection import (MAX_EXTENSIONS, best, decide, extension_candidates, grid_edges, holdout_scores,
                             selection_note, standard_error)


def table(scores, folds_sd=0.0, sigmas=(2.0, 4.0, 8.0), lams=(1e-4, 1e-3, 1e-2), seed=0):
    """A (sigma, lam) score table from ``scores`` (len(sigmas), len(lams)), with five per-fold scores around each
    whose standard error is folds_sd / sqrt(5) (exactly)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=5)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    out = []
    for i, s in enumerate(sigmas):
        for j, lam in enumerate(lams):
            mse = float(scores[i][j])
            out.append(dict(sigma=s, lam=lam, mse=mse, mse_folds=list(mse + folds_sd * noise)))
    return out


def test_standard_error_from_folds_or_holdout():
    entry = table([[1, 2, 3]] * 3, folds_sd=0.5)[0]
    assert abs(standard_error(entry) - 0.5 / 5 ** 0.5) < 1e-12
    assert standard_error(dict(sigma=1, lam=1, mse=1.0, mse_se=0.2)) == 0.2
    assert standard_error(dict(sigma=1, lam=1, mse=1.0)) is None
    assert standard_error(dict(sigma=1, lam=1, mse=1.0, mse_folds=[1.0])) is None


def test_clear_winner_inside_the_grid_is_decisive():
    scores = [[5.0, 4.0, 5.0], [4.0, 1.0, 4.0], [5.0, 4.0, 5.0]]
    winner, rec = decide(table(scores, folds_sd=0.1))
    assert (winner["sigma"], winner["lam"]) == (4.0, 1e-3)
    assert rec["decisive"] is True and rec["n_tied"] == 1 and rec["edges"] == []
    assert rec["winner"] == rec["lowest"]
    assert selection_note(rec) is None
    json.dumps(rec)  # JSON-ready, as MODEL.json keeps it


def test_tie_within_one_standard_error_takes_the_lowest_and_says_not_decisive():
    # the lowest is (4, 1e-3); (8, 1e-3) and (4, 1e-2) are within one SE (0.5 / sqrt 5 = 0.22); (8, 1e-2) is not
    scores = [[5.0, 4.0, 5.0], [4.0, 1.0, 1.2], [5.0, 1.1, 1.5]]
    winner, rec = decide(table(scores, folds_sd=0.5))
    assert (winner["sigma"], winner["lam"]) == (4.0, 1e-3)   # the lowest, not the smoothest of the tied
    assert rec["decisive"] is False and rec["n_tied"] == 3 and rec["n_candidates"] == 9
    assert (rec["lowest"]["sigma"], rec["lowest"]["lam"]) == (4.0, 1e-3)
    assert rec["standard_error"] == standard_error(table(scores, folds_sd=0.5)[4])
    assert rec["edges"] == []
    note = selection_note(rec)
    assert "\n" not in note and "not decisive" in note and "3 of 9" in note and "edge" not in note
    # the same scores with tight folds: decisive, the lowest wins
    winner, rec = decide(table(scores, folds_sd=0.01))
    assert (winner["sigma"], winner["lam"]) == (4.0, 1e-3) and rec["decisive"] is True


def test_a_tie_at_equal_sigma_keeps_the_lowest_and_its_edge():
    scores = [[5.0, 5.0, 5.0], [1.0, 1.05, 1.1], [5.0, 5.0, 5.0]]
    winner, rec = decide(table(scores, folds_sd=0.5))
    assert (winner["sigma"], winner["lam"]) == (4.0, 1e-4) and rec["decisive"] is False and rec["n_tied"] == 3
    assert rec["edges"] == ["lam at the lower edge"]


def test_edge_is_reported_even_when_decisive():
    scores = [[5.0, 4.0, 0.5], [4.0, 2.0, 3.0], [5.0, 4.0, 5.0]]
    winner, rec = decide(table(scores, folds_sd=0.1))
    assert (winner["sigma"], winner["lam"]) == (2.0, 1e-2) and rec["decisive"] is True
    assert rec["edges"] == ["sigma at the lower edge", "lam at the upper edge"]
    note = selection_note(rec)
    assert note.startswith("selection ") and "not decisive" not in note and "extend the grid" in note
    # a hyperparameter that was not searched (one value) has no edge
    single = [e for e in table(scores, folds_sd=0.1) if e["lam"] == 1e-3]
    assert grid_edges(single, single[1]) == []


def test_two_layer_records_are_noted_by_layer():
    tie = decide(table([[5.0, 4.0, 5.0], [4.0, 1.0, 1.2], [5.0, 1.1, 1.5]], folds_sd=0.5))[1]
    clean = decide(table([[5.0, 4.0, 5.0], [4.0, 1.0, 4.0], [5.0, 4.0, 5.0]], folds_sd=0.1))[1]
    note = selection_note(dict(layer1=clean, layer2=tie))
    assert note.startswith("selection layer2: not decisive") and "layer1" not in note
    assert selection_note(dict(layer1=clean, layer2=clean)) is None
    assert selection_note(None) is None


def test_tables_without_spread_keep_the_lowest_first_rule():
    """Older tables (no folds, no standard error): the lowest score, the first of equal ones; unknown whether
    decisive, and nothing said about it."""
    old = [dict(sigma=2.0, lam=1.0, mse=5.0), dict(sigma=4.0, lam=1.0, mse=3.0), dict(sigma=8.0, lam=1.0, mse=3.0)]
    winner, rec = decide(old)
    assert winner is old[1] and best(old) is old[1]
    assert rec["decisive"] is None and rec["rule"] == "lowest score" and rec["edges"] == []
    assert selection_note(rec) is None


def test_holdout_scores_carry_their_standard_error():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(400, 4, 3))
    pred = target + rng.normal(scale=0.5, size=target.shape)
    entry = holdout_scores(pred, target, "force")
    per_frame = ((pred - target) ** 2).reshape(400, -1).mean(1)
    assert abs(entry["mse"] - per_frame.mean()) < 1e-12 and abs(entry["mse"] - 0.25) < 0.02
    assert abs(entry["mse_se"] - per_frame.std(ddof=1) / 20) < 1e-12
    # two candidates whose hold-out scores differ by much less than that error tie
    a = dict(sigma=2.0, lam=1e-3, **entry)
    b = dict(sigma=4.0, lam=1e-3, **{**entry, "mse": entry["mse"] + 0.1 * entry["mse_se"]})
    winner, rec = decide([a, b])
    assert winner is a and rec["decisive"] is False and rec["n_tied"] == 2


def test_fit_command_records_the_selection_and_says_when_it_hit_an_edge(noisy_toy, tmp_path, capsys):
    """A two-point sigma grid: the winner is on its edge, so ``python -m cgdml.fit`` prints one selection line, and
    MODEL.json keeps the record."""
    from cgdml.fit import main as fit_main

    data, _ = noisy_toy
    path = tmp_path / "toy.npz"
    data.subset(np.arange(1500)).save(path)
    out = tmp_path / "model.npz"
    assert fit_main([str(path), "-o", str(out), "--method", "nystrom", "--n-inducing", "60", "--sigma", "1", "2",
                     "--lam", "1", "--strata", "kmeans", "--no-progress"]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    rec = info["selection"]
    # the winner sat on an edge of (1, 2): the search went past it, one step per extension, until it did not
    extended = rec.get("extended", [])
    assert rec["n_candidates"] == 2 + len(extended) >= 3 and rec["decisive"] in (True, False)
    assert [e["sigma"] for e in extended] == [4.0, 8.0, 16.0][:len(extended)] or \
        [e["sigma"] for e in extended] == [0.5, 0.25][:len(extended)]
    assert bool(rec["edges"]) is (len(extended) == MAX_EXTENSIONS or extended[-1]["sigma"] in (0.25,))
    assert (rec["winner"]["sigma"], rec["winner"]["lam"]) == (info["chosen"]["sigma"], info["chosen"]["lam"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("selection ")]
    note = selection_note(rec)
    assert lines == ([note] if note else [])


def test_extension_steps_past_the_edge_the_winner_sits_on():
    """One geometric step past each edge of the winner, with its other hyperparameter; none inside the grid,
    none beyond the bounds, none already scored."""
    table = [dict(sigma=s, lam=lam, mse=1.0) for s in (2.0, 4.0, 8.0) for lam in (0.3, 1.0, 3.0)]
    assert extension_candidates(table, dict(sigma=4.0, lam=1.0)) == []
    assert extension_candidates(table, dict(sigma=8.0, lam=0.3)) == [(16.0, 0.3), (8.0, 0.09)]
    assert extension_candidates(table + [dict(sigma=16.0, lam=0.3, mse=1.0)], dict(sigma=8.0, lam=0.3)) == \
        [(8.0, 0.09)]
    edge = [dict(sigma=1.0, lam=3000.0, mse=1.0), dict(sigma=1.0, lam=9000.0, mse=1.0)]
    assert extension_candidates(edge, edge[1]) == []   # 27000 is past the bound


def test_a_lambda_grid_below_the_noise_is_extended_upward(noisy_toy):
    """Labels four times noisier than the learnable force: a grid of tiny lambdas puts the winner on its upper
    edge, and the inducing-point fit scores candidates past it until the winner is inside (or the extensions run
    out), recording them."""
    from cgdml.nystrom import NystromGDML

    data, _ = noisy_toy
    fit = NystromGDML(sigma=2.0, lam=(1e-4, 3e-4), n_inducing=60, select_inducing=60, progress=False).fit(
        data.coords[:1500], data.forces[:1500])
    rec = fit.selection_
    lams = [e["lam"] for e in rec["extended"]]
    assert lams and np.allclose(lams, [9e-4, 2.7e-3, 8.1e-3][:len(lams)])
    assert rec["winner"]["lam"] > 3e-4 and fit.summary_["chosen"]["lam"] == rec["winner"]["lam"]
    assert len(fit.selection_scores_) == 2 + len(lams)
