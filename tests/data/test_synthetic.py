"""The synthetic data set: deterministic, the sizes asked for, and real-log structure.

The signal tests use no neural model: three count-based recommenders on a leave-last-out split
show that popularity is a real but beatable baseline, that the previous item predicts the next
one (short-term signal) and that the user's whole history does too (long-term signal).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raytower.data._raw import RawData
from raytower.data._synthetic import generate, parse_synthetic_spec
from raytower.errors import DataError


@pytest.fixture(scope="module")
def raw() -> RawData:
    return generate(seed=0)  # the defaults: 2000 users, 1000 items


def _lengths(raw: RawData) -> np.ndarray:
    return raw.interactions.groupby("user").size().to_numpy()


def test_contract(raw):
    df = raw.interactions
    assert raw.name == "synthetic"
    assert list(df.columns[:3]) == ["user", "item", "timestamp"]
    assert df["timestamp"].dtype == np.int64
    assert df["rating"].between(1, 5).all()
    assert pd.api.types.is_integer_dtype(df["user"]) and pd.api.types.is_integer_dtype(df["item"])
    assert list(raw.items.columns) == ["item", "title", "genres", "year"]
    assert raw.items["year"].dtype == "Int64"
    assert list(raw.users.columns) == ["user", "age", "gender", "occupation"]
    assert raw.users["age"].dtype == "Int64"
    assert set(raw.users["age"].unique()) <= {1, 18, 25, 35, 45, 50, 56}
    assert set(raw.users["gender"].unique()) == {"M", "F"}
    assert raw.users["occupation"].nunique() > 10


def test_deterministic_for_a_seed():
    a, b, c = generate(seed=7, n_users=300, n_items=200), generate(seed=7, n_users=300, n_items=200), \
        generate(seed=8, n_users=300, n_items=200)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, b.users)
    assert not a.interactions.equals(c.interactions)


def test_sizes_respected():
    r = generate(seed=1, n_users=700, n_items=450, mean_len=25, short_history_frac=0.2, n_genres=8)
    df = r.interactions
    assert sorted(df["user"].unique()) == list(range(1, 701))  # every user, ids from 1
    assert df["item"].min() >= 1 and df["item"].max() <= 450
    assert list(r.items["item"]) == list(range(1, 451))
    assert list(r.users["user"]) == list(range(1, 701))
    genres = set("|".join(r.items["genres"]).split("|"))
    assert len(genres) <= 8 and "" not in genres
    assert r.items["genres"].str.count(r"\|").max() <= 2  # 1-3 genres per item
    warm = _lengths(r)[_lengths(r) > 8]
    assert 0.75 * 25 < _lengths(r).mean() / (1 - 0.2 * 0.8) < 1.25 * 25  # cold users pull it down
    assert warm.size > 0


def test_popularity_is_power_law_ish(raw):
    counts = np.sort(raw.interactions["item"].value_counts().to_numpy())[::-1]
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3  # the top 10% of items take far more than 10% of interactions
    assert counts[0] > 20 * np.median(counts)  # a long tail
    # Roughly linear on log-log: counts fall steadily with rank over the head of the curve.
    rank = np.arange(1, 201)
    slope = np.polyfit(np.log(rank), np.log(counts[:200]), 1)[0]
    assert -2.0 < slope < -0.3


def test_timestamps_increase_per_user_with_some_ties(raw):
    df = raw.interactions
    same_user = df["user"].to_numpy()[1:] == df["user"].to_numpy()[:-1]
    dt = np.diff(df["timestamp"].to_numpy())[same_user]
    assert (dt >= 0).all()
    assert 0 < (dt == 0).mean() < 0.2
    assert df.duplicated(["user", "item", "timestamp"]).mean() < 0.005
    assert 0 < df.duplicated(["user", "item"]).mean() < 0.03  # rare re-watches


def test_lengths_heavy_tailed_with_floor_and_cold_group(raw):
    lengths = _lengths(raw)
    assert lengths.min() >= 3
    assert lengths.max() > 5 * np.median(lengths)  # heavy tail
    assert np.mean(lengths) > np.median(lengths)
    cold = (lengths >= 3) & (lengths <= 8)
    assert 0.07 < cold.mean() < 0.3  # the cold-start group (10%) plus a few short regular users
    no_cold = generate(seed=0, n_users=500, short_history_frac=0.0, mean_len=60)
    assert (_lengths(no_cold) <= 8).mean() < (lengths <= 8).mean()


def test_demographics_correlate_with_taste(raw):
    """Genre shares differ between age groups and genders by far more than between random groups."""
    df = raw.interactions.merge(raw.users, on="user").merge(raw.items, on="item")
    genre = df.assign(genre=df["genres"].str.split("|")).explode("genre")

    def tv(col: str, shuffle: bool, split) -> float:  # total variation between two groups
        values = raw.users[col].to_numpy()
        if shuffle:
            values = np.random.default_rng(0).permutation(values)
        g = genre["user"].map(dict(zip(raw.users["user"], values)))
        a = genre[split(g)]["genre"].value_counts(normalize=True)
        b = genre[~split(g)]["genre"].value_counts(normalize=True)
        return a.subtract(b, fill_value=0).abs().sum() / 2

    young = lambda age: age.astype(float) < 30  # noqa: E731
    male = lambda gender: gender == "M"  # noqa: E731
    assert tv("age", False, young) > 2 * tv("age", True, young)
    assert tv("gender", False, male) > 2 * tv("gender", True, male)
    # and older users watch older items
    assert df[df["age"] >= 45]["year"].mean() < df[df["age"] < 25]["year"].mean() - 1


def _recall_at(scores: np.ndarray, seen: np.ndarray, target: np.ndarray, pop: np.ndarray, k=100) -> float:
    scores = scores + pop / pop.max() * 1e-6  # popularity breaks ties
    scores[seen] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((top == target[:, None]).any(1).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_short_and_long_term_signals_beat_popularity(seed):
    raw = generate(seed=seed)
    df = raw.interactions  # sorted by user, then time
    u = df["user"].to_numpy() - 1
    i = df["item"].to_numpy() - 1
    n_users, n_items = u.max() + 1, len(raw.items)
    end = np.cumsum(np.bincount(u, minlength=n_users))
    last, start = end - 1, end - np.bincount(u, minlength=n_users)
    train = np.ones(len(u), dtype=bool)
    train[last] = False  # hold out each user's last item
    target = i[last]

    pop = np.bincount(i[train], minlength=n_items).astype(np.float64)
    seen = np.zeros((n_users, n_items), dtype=bool)
    seen[u[train], i[train]] = True
    # (b) "next after the previous item": transition counts between consecutive training items.
    consecutive = (u[1:] == u[:-1]) & train[1:]
    pairs = i[:-1][consecutive] * n_items + i[1:][consecutive]
    trans = np.bincount(pairs, minlength=n_items * n_items).reshape(n_items, n_items).astype(np.float32)
    # (c) the user's whole history: items co-occurring with it across users (cosine-normalised).
    x = seen.astype(np.float32)
    co = x.T @ x
    np.fill_diagonal(co, 0.0)
    co /= np.sqrt(np.outer(pop + 1, pop + 1)).astype(np.float32)

    r_pop = _recall_at(np.tile(pop, (n_users, 1)), seen, target, pop)
    r_next = _recall_at(trans[i[last - 1]], seen, target, pop)
    r_first = _recall_at(trans[i[start]], seen, target, pop)
    r_taste = _recall_at(x @ co, seen, target, pop)

    assert 0.15 < r_pop < 0.6  # popularity is a real baseline ...
    assert r_next > 1.2 * r_pop and r_next > r_pop + 0.07  # ... that the short-term signal beats
    assert r_taste > 1.3 * r_pop and r_taste > r_pop + 0.1  # ... and the long-term one too
    # Short-term, not just taste: the most recent item predicts better than the first one.
    assert r_next > r_first + 0.05


def test_parse_spec():
    assert parse_synthetic_spec("synthetic")["n_users"] == 2000
    p = parse_synthetic_spec("synthetic:n_users=500,n_items=300,seed=3")
    assert (p["n_users"], p["n_items"], p["seed"]) == (500, 300, 3)
    assert parse_synthetic_spec("synthetic:n_users=1e6,ratings=false,p_follow=0.3")["n_users"] == 1_000_000
    raw = generate(**parse_synthetic_spec("synthetic:n_users=50,n_items=40,seed=3"))
    assert raw.interactions["user"].nunique() == 50


def test_the_old_option_name_is_the_same_data_and_says_so_once(capsys):
    from raytower.data._load import _resolve

    old, new = "synthetic:n_users=300,cold_frac=0.3", "synthetic:n_users=300,short_history_frac=0.3"
    assert parse_synthetic_spec(old) == parse_synthetic_spec(new)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cold_frac is deprecated" in err[0] and "short_history_frac" in err[0], err
    # the fingerprint (the bundle's cache entry, a best_config.json's dataset) is made of the names it had
    key = _resolve(new)[1]["synthetic"]
    assert key["cold_frac"] == 0.3 and "short_history_frac" not in key


@pytest.mark.parametrize("spec, match", [
    ("synthetic:n_userz=5", "unknown option 'n_userz'"),
    ("synthetic:n_users=abc", "bad value 'abc' for n_users"),
    ("synthetic:n_users=2.5", "bad value"),
    ("synthetic:n_users=0", "n_users must be >= 1"),
    ("synthetic:short_history_frac=2", "short_history_frac must be in"),
    ("synthetic:cold_frac=2", "short_history_frac must be in"),  # the old name, read as the new one
    ("synthetic:seed", "expected key=value"),
    ("synthetic:ratings=maybe", "bad value"),
])
def test_parse_spec_errors_name_the_spec(spec, match):
    with pytest.raises(DataError, match=match) as e:
        parse_synthetic_spec(spec)
    assert spec in str(e.value) and "\n" not in str(e.value)


def test_generate_rejects_bad_sizes():
    with pytest.raises(DataError, match="n_items"):
        generate(n_items=3)
