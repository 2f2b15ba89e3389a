"""The embedded default data set: a synthetic interaction log with the structure real logs have.

Nothing here is meant to be realistic in detail; it is meant to carry the *kinds* of signal a
two-tower model, a graph model and a sequence model each learn from, so that the whole pipeline
can be exercised, tuned and compared without downloading anything:

* **popularity** - item weights follow a Zipf law (``pop_alpha``), so a most-popular baseline is
  a real baseline, and there is a long tail;
* **long-term taste** - items live in latent *topics*; a topic has 1-3 genres and an era, and its
  centroid in a latent space is built from its genres' vectors. A user's latent vector comes from
  their demographics (age, gender, occupation) plus noise; it picks a handful of favourite
  topics the user keeps returning to (collaborative / graph signal; demographics predict taste);
* **short-term drift** - within a session the user follows a slowly moving intent (the current
  topic, which now and then drifts to a neighbouring topic), and sometimes picks a direct
  "successor" of the previous item (a sequel, a related item): the signal a sequence model reads
  from the last few items, and which the user's whole history does not carry;
* **exploration** - some picks ignore the user and follow global popularity (noise);
* **sequence lengths** - log-normal (heavy-tailed) with a floor of ``min_len``, plus a share
  (``short_history_frac``) of cold-start-like users with only ``cold_min_len``..``cold_max_len``
  interactions;
* **time** - increasing per user: seconds to minutes inside a session (some exact ties, as when a
  user rates several items at once), hours to days between sessions.

Each user's draws are deduplicated (a re-watch survives with probability ``repeat_prob``), so a
user rarely sees an item twice, as in MovieLens.

Everything is vectorised numpy. Users are generated in fixed-size chunks (independent of the
parameters, so the output for a seed never depends on memory), each chunk stepping through
sequence positions for all of its users at once; 1M users x 100k items (~50M interactions) runs in
a few minutes and a few GiB.
"""

from __future__ import annotations

import inspect
import math
import sys

import numpy as np
import pandas as pd

from raytower.data._raw import RawData
from raytower.errors import DataError

# Bump when the generator's output for the same parameters changes, so caches keyed on the
# parameters alone can include it.
GENERATOR_VERSION = 1

# Users per generation chunk. A constant, not a parameter: the random streams are per chunk, so
# changing it would change the output of a seed.
_CHUNK_USERS = 1 << 16

# The largest sizes generated: far above the 10M-interaction scale raytower is built for (ML-20M
# has 20M ratings of 138K users), and still within a workstation's memory. The whole log is made in
# memory, so a size past them (n_users=1e12) would end in a MemoryError deep inside numpy.
_MAX_SIZE = {"n_users": 20_000_000, "n_items": 10_000_000, "mean_len": 100_000, "max_len": 1_000_000,
             "cold_max_len": 100_000, "n_topics": 4096, "dim": 1024}
_MAX_INTERACTIONS = 200_000_000
_MAX_USER_FLOATS = 320_000_000  # n_users x dim: the users' latent vectors (float64 while made)

GENRE_NAMES = (
    "Drama", "Comedy", "Action", "Thriller", "Romance", "Adventure", "Crime", "Sci-Fi", "Horror",
    "Children's", "Animation", "Documentary", "Fantasy", "Mystery", "Musical", "War", "Western",
    "Film-Noir",
)
# Relative frequency of each genre as a topic's main genre (Drama and Comedy dominate, as in
# MovieLens).
_GENRE_WEIGHT = np.array([18, 14, 8, 7, 6, 5, 5, 4, 4, 3, 3, 3, 3, 2, 2, 2, 1, 1], dtype=np.float64)

# MovieLens 1M's age codes (lower bounds; 1 = "under 18") and their share of its users.
AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])
_AGE_P = np.array([222, 1103, 2096, 1193, 550, 496, 380], dtype=np.float64)
OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)
_OCC_P = np.array([711, 528, 267, 173, 759, 112, 236, 679, 17, 92, 195, 129, 388, 142, 302, 144,
                   241, 502, 70, 72, 281], dtype=np.float64)
# Occupations tied to an age code: (age index, occupation index, probability of taking it).
_AGE_OCC = ((0, 10, 0.7), (1, 4, 0.5), (6, 13, 0.5))

_T0 = 946_684_800  # 2000-01-01 UTC: users start within the first ~3 years after this
_START_SPAN = 3 * 365 * 86_400
_TOP_TOPICS = 6  # at most this many favourite topics per user
_N_NEIGHBOURS = 4  # topics an intent can drift to
_N_SUCCESSORS = 3  # "sequels" per item


def generate(
    *,
    # sizes (grouped as the docstring's sections are)
    seed: int = 0, n_users: int = 2000, n_items: int = 1000, mean_len: float = 40.0, short_history_frac: float = 0.1,
    min_len: int = 3, cold_min_len: int = 3, cold_max_len: int = 8, max_len: int = 0, len_sigma: float = 1.0,
    # items and users
    n_genres: int = 12, n_topics: int = 0, dim: int = 16, pop_alpha: float = 0.9, taste_temp: float = 0.35,
    demo_weight: float = 1.2,
    # the sequence process
    p_follow: float = 0.3, p_session: float = 0.35, p_explore: float = 0.1, p_drift: float = 0.15,
    p_new_session: float = 0.1, p_tie: float = 0.05, repeat_prob: float = 0.01, ratings: bool = True,
) -> RawData:
    """Generate a synthetic interaction log with item and user tables. Same seed, same output.

    Sizes
        seed: random seed; the output is a pure function of all the parameters.
        n_users, n_items: how many users and items (ids 1..n). Every user has >= ``min_len``
            interactions; items nobody picked are still listed in the item table.
        mean_len: target mean sequence length of the regular (non-cold) users. It is a target:
            users whose draws repeat items a lot (tiny catalogues, very long sequences) end shorter.
        short_history_frac: fraction of users with short histories, cold-start-like, of
            ``cold_min_len``..``cold_max_len`` interactions (uniform). Data preparation's
            ``cold_frac`` is another thing: the users it keeps out of the graph.
        min_len: the floor of every sequence (3 = train + validation + test).
        max_len: cap on a sequence's length; 0 = automatic (50 x mean_len, at most half the
            catalogue).
        len_sigma: log-normal sigma of the regular users' lengths (1.0 ~ MovieLens' skew).

    Items and users
        n_genres: how many genres (at most 18 named ones; more get generic names). Each item has
            1-3, '|'-joined in ``items.genres``; items also have a release ``year``.
        n_topics: latent topics items belong to; 0 = automatic (about 40 items each, 4..512).
        dim: dimension of the latent space topics and users live in.
        pop_alpha: Zipf exponent of item popularity (weight of the item of rank r is r**-alpha).
        taste_temp: how sharply a user's latent vector picks their favourite topics (smaller =
            more concentrated tastes = stronger long-term signal).
        demo_weight: how much of a user's latent vector comes from age, gender and occupation.

    The sequence process (per step; the rest of the probability mass is a long-term-taste pick)
        p_follow: pick a successor ("sequel") of the previous item.
        p_session: pick from the current session intent topic.
        p_explore: pick by global popularity, ignoring the user.
        p_drift: per step, the session intent moves to a neighbouring topic.
        p_new_session: per step, a new session starts (a time gap of hours to days; the intent is
            redrawn from the user's long-term taste).
        p_tie: within a session, the next timestamp equals the previous one.
        repeat_prob: chance that a repeat of an item already in the user's history is kept.
        ratings: add a ``rating`` column (1-5, higher for picks that match the user's taste).
    """
    p = dict(locals())
    _validate(p)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    world = _World(rng, p)
    users = _make_users(rng, p)
    u_vec = _user_vectors(rng, p, users, world)
    cold = rng.random(n_users) < short_history_frac
    target = _target_lengths(rng, p, cold, world.max_len)
    interactions = _interactions(p, world, u_vec, target)
    users.insert(0, "user", np.arange(1, n_users + 1))
    return RawData(name="synthetic", interactions=interactions, items=world.item_table(), users=users)


def _interactions(p: dict, world: _World, u_vec: np.ndarray, target: np.ndarray) -> pd.DataFrame:
    """Every user's sequence, chunk by chunk: each chunk draws from its own stream of the seed, so
    the output never depends on how many users are generated at once."""
    n_users = p["n_users"]
    parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "timestamp": [], "rating": []}
    for c, lo in enumerate(range(0, n_users, _CHUNK_USERS)):
        hi = min(lo + _CHUNK_USERS, n_users)
        crng = np.random.default_rng(np.random.SeedSequence([p["seed"], 1, c]))
        out = _generate_chunk(crng, p, world, u_vec[lo:hi], target[lo:hi])
        parts["user"].append((out["user"] + (lo + 1)).astype(np.int32))
        for k in ("item", "timestamp", "rating"):
            parts[k].append(out[k])
        del out

    cols = {k: _concat_and_free(parts, k) for k in ("user", "item", "timestamp")}
    rating = _concat_and_free(parts, "rating")
    if p["ratings"]:
        cols["rating"] = rating
    del rating
    return pd.DataFrame(cols, copy=False)


def parse_synthetic_spec(spec: str) -> dict:
    """'synthetic' or 'synthetic:n_users=500,n_items=300,seed=3' -> generate()'s keyword arguments.

    Returns every parameter (defaults filled in), so the dict identifies the output. Unknown keys
    and values that do not parse or are out of range raise DataError naming the spec.
    """
    base, sep, rest = str(spec).partition(":")
    if base.strip() != "synthetic":
        raise DataError("not a synthetic data spec (expected 'synthetic[:key=value,...]')", spec)
    defaults = _defaults()
    out = dict(defaults)
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise DataError(f"bad option {part!r}: expected key=value", spec)
        key = _current_name(key)
        if key not in defaults:
            raise DataError(f"unknown option {key!r}; known: {', '.join(defaults)}", spec)
        out[key] = _parse_value(spec, key, value, defaults[key])
    try:
        _validate(out)
    except DataError as e:
        raise DataError(str(e), spec) from None
    return out


# --------------------------------------------------------------------------- parameters

# Options renamed, old -> new: the old name is read for one release, with a note on stderr. The
# source key keeps the old names, so a bundle's fingerprint (and its cache entry) stays the same.
RENAMED = {"cold_frac": "short_history_frac"}  # 0.x; data preparation's cold_frac is another thing


def _current_name(key: str) -> str:
    if key in RENAMED:
        print(f"raytower: warning: synthetic option {key} is deprecated and goes in the next release; use "
              f"{RENAMED[key]}", file=sys.stderr)
    return RENAMED.get(key, key)


def source_key(kwargs: dict) -> dict:
    """generate()'s arguments as a bundle's fingerprint names them: under their names before any rename."""
    old_name = {new: old for old, new in RENAMED.items()}
    return {old_name.get(k, k): v for k, v in kwargs.items()}



def _defaults() -> dict:
    return {k: v.default for k, v in inspect.signature(generate).parameters.items()}


def _parse_value(spec: str, key: str, value: str, default):
    try:
        if isinstance(default, bool):  # before int: bool is an int
            low = value.lower()
            if low not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return low in ("1", "true", "yes")
        if isinstance(default, int):
            f = float(value.replace("_", ""))  # accept 1e6 and 1_000_000, not 2.5
            if not f.is_integer():
                raise ValueError
            return int(f)
        return float(value)
    except ValueError:
        kind = type(default).__name__
        raise DataError(f"bad value {value!r} for {key}: expected {kind}", spec) from None


def _validate(p: dict) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise DataError(f"synthetic data: {msg}")

    need(p["seed"] >= 0, f"seed must be >= 0, got {p['seed']}")
    need(p["n_users"] >= 1, f"n_users must be >= 1, got {p['n_users']}")
    need(p["n_items"] >= 10, f"n_items must be >= 10, got {p['n_items']}")
    need(p["min_len"] >= 1, f"min_len must be >= 1, got {p['min_len']}")
    need(p["mean_len"] >= p["min_len"], f"mean_len must be >= min_len, got {p['mean_len']}")
    need(0.0 <= p["short_history_frac"] <= 1.0,
         f"short_history_frac must be in [0, 1], got {p['short_history_frac']}")
    need(p["min_len"] <= p["cold_min_len"] <= p["cold_max_len"],
         "need min_len <= cold_min_len <= cold_max_len")
    need(p["max_len"] == 0 or p["max_len"] >= max(p["min_len"], p["cold_max_len"]),
         "max_len must be 0 (automatic) or >= min_len and cold_max_len")
    need(p["len_sigma"] >= 0, "len_sigma must be >= 0")
    need(1 <= p["n_genres"] <= 100, f"n_genres must be in 1..100, got {p['n_genres']}")
    need(p["n_topics"] >= 0, "n_topics must be >= 0 (0 = automatic)")
    need(p["dim"] >= 2, "dim must be >= 2")
    need(p["pop_alpha"] >= 0, "pop_alpha must be >= 0")
    need(p["taste_temp"] > 0, "taste_temp must be > 0")
    need(p["demo_weight"] >= 0, "demo_weight must be >= 0")
    for k in ("p_follow", "p_session", "p_explore", "p_drift", "p_new_session", "p_tie", "repeat_prob"):
        need(0.0 <= p[k] <= 1.0, f"{k} must be in [0, 1], got {p[k]}")
    need(p["p_follow"] + p["p_session"] + p["p_explore"] <= 1.0,
         "p_follow + p_session + p_explore must be <= 1")
    _check_sizes(p, need)


def _check_sizes(p: dict, need) -> None:
    """Sizes the generator can hold in memory (``_MAX_SIZE``), and the interactions they add up to."""
    for key, limit in _MAX_SIZE.items():
        need(p[key] <= limit, f"{key} must be <= {limit:,}, got {p[key]:,}")
    regular = min(p["mean_len"], p["max_len"] or p["mean_len"])
    short = p["short_history_frac"]
    expected = p["n_users"] * ((1 - short) * regular + short * (p["cold_min_len"] + p["cold_max_len"]) / 2)
    need(expected <= _MAX_INTERACTIONS, f"n_users={p['n_users']:,} x mean_len={p['mean_len']:g} makes about "
         f"{expected:,.0f} interactions; at most {_MAX_INTERACTIONS:,} are generated (all in memory)")
    need(p["n_users"] * p["dim"] <= _MAX_USER_FLOATS,
         f"n_users x dim must be <= {_MAX_USER_FLOATS:,} (the users' latent vectors), got {p['n_users'] * p['dim']:,}")


# --------------------------------------------------------------------------- the world


class _World:
    """Genres, topics, items and the samplers over them (shared by every user chunk)."""

    def __init__(self, rng: np.random.Generator, p: dict):
        n_items, G = p["n_items"], p["n_genres"]
        K = p["n_topics"] or int(np.clip(round(n_items / 40), 4, 512))
        K = min(K, n_items)
        self.n_items, self.n_topics, self.dim = n_items, K, p["dim"]
        self.genre_names = [GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"Genre{g + 1}" for g in range(G)]
        # Each step draws from ``rng`` in turn: their order is part of what a seed means.
        topic_genres, era = self._make_topics(rng, G)
        topic = self._assign_items(rng, p["pop_alpha"])
        self._give_items_genres_and_years(rng, topic, topic_genres, era)
        self._index_by_topic(topic)
        self.neighbours = self._neighbour_topics()
        # Successors ("sequels"): a few popularity-weighted items of the same topic per item.
        succ = self.sample_in_topic(np.repeat(topic, _N_SUCCESSORS), rng.random(n_items * _N_SUCCESSORS))
        self.successors = succ.reshape(n_items, _N_SUCCESSORS).astype(np.int32)
        self.max_len = p["max_len"] or int(max(p["cold_max_len"], min(50 * p["mean_len"], n_items // 2)))

    def _make_topics(self, rng: np.random.Generator, G: int) -> tuple[np.ndarray, np.ndarray]:
        """Each topic's genres (K x G booleans) and era; its unit centroid in ``self.centroid``.

        Genres are directions in the latent space; a topic's centroid is the mean of its genres'
        directions plus its own offset, so genres are informative about taste but not all of it."""
        K, dim = self.n_topics, self.dim
        genre_vec = rng.standard_normal((G, dim))
        gw = _GENRE_WEIGHT[:G] if G <= len(_GENRE_WEIGHT) else np.ones(G)
        n_g = rng.choice([1, 2, 3], size=K, p=[0.45, 0.35, 0.2])
        n_g = np.minimum(n_g, G)
        topic_genres = np.zeros((K, G), dtype=bool)
        # Weighted sampling without replacement (Gumbel top-k): the main genre follows gw.
        keys = np.log(gw / gw.sum())[None, :] + rng.gumbel(size=(K, G))
        ranked = np.argsort(-keys, axis=1)
        for j in range(min(3, G)):
            rows = np.nonzero(n_g > j)[0]
            topic_genres[rows, ranked[rows, j]] = True
        centroid = topic_genres @ genre_vec / topic_genres.sum(1, keepdims=True)
        centroid += 0.6 * rng.standard_normal((K, dim))
        # The last latent dimension is the topic's era (older topics negative), so user age, which
        # also feeds that dimension, shifts taste towards older or newer items.
        era = 2018 - rng.gamma(1.5, 12.0, size=K)
        era = np.clip(era, 1925, 2018)
        centroid[:, -1] = (era - era.mean()) / (era.std() + 1e-9)
        centroid /= np.linalg.norm(centroid, axis=1, keepdims=True)
        self.centroid = centroid
        return topic_genres, era

    def _assign_items(self, rng: np.random.Generator, pop_alpha: float) -> np.ndarray:
        """Each item's topic (returned; also ``self.topic``) and popularity weight (``self.weight``)."""
        K, n_items = self.n_topics, self.n_items
        # Topic sizes vary (gamma weights), every topic gets at least one item.
        size_w = rng.gamma(2.0, size=K)
        topic = np.concatenate([np.arange(K), rng.choice(K, size=n_items - K, p=size_w / size_w.sum())])
        topic = rng.permutation(topic)
        self.topic = topic.astype(np.int32)
        # Zipf popularity over a random ranking, so item ids carry no popularity information.
        rank = rng.permutation(n_items)
        self.weight = (rank + 1.0) ** -pop_alpha
        return topic

    def _give_items_genres_and_years(self, rng: np.random.Generator, topic: np.ndarray, topic_genres: np.ndarray,
                                     era: np.ndarray) -> None:
        """Item genres: the topic's, occasionally with one genre added or dropped; a year near its era."""
        n_items, G = self.n_items, topic_genres.shape[1]
        ig = topic_genres[topic].copy()
        cnt = ig.sum(1)
        add = (rng.random(n_items) < 0.2) & (cnt < 3)
        ig[np.nonzero(add)[0], rng.integers(G, size=int(add.sum()))] = True
        cnt = ig.sum(1)
        drop = np.nonzero((rng.random(n_items) < 0.1) & (cnt > 1))[0]
        ig[drop, np.argmax(ig[drop] * rng.random((len(drop), G)), axis=1)] = False
        self.item_genres = ig
        self.year = np.clip(np.round(era[topic] + rng.normal(0.0, 5.0, n_items)), 1920, 2023).astype(np.int64)

    def _index_by_topic(self, topic: np.ndarray) -> None:
        """Within-topic popularity sampling: items sorted by topic, one global CDF, and each topic's
        slice of it. A draw for topic k is a uniform in that slice, located by searchsorted."""
        self.by_topic = np.argsort(topic, kind="stable").astype(np.int32)
        cdf = np.cumsum(self.weight[self.by_topic])
        self.cdf = cdf
        counts = np.bincount(topic, minlength=self.n_topics)
        self.t_end = np.cumsum(counts)
        self.t_start = self.t_end - counts
        self.t_lo = np.where(self.t_start > 0, cdf[np.maximum(self.t_start - 1, 0)], 0.0)
        self.t_mass = cdf[self.t_end - 1] - self.t_lo
        # Exploration = a topic by its total mass, then an item in it = global popularity.
        self.topic_cdf = np.cumsum(self.t_mass) / self.t_mass.sum()

    def _neighbour_topics(self) -> np.ndarray:
        """The topics (by centroid similarity) a session intent can drift to, per topic."""
        K = self.n_topics
        sim = self.centroid @ self.centroid.T
        np.fill_diagonal(sim, -np.inf)
        nn = min(_N_NEIGHBOURS, K - 1)
        return (np.argsort(-sim, axis=1)[:, :nn] if nn > 0 else np.arange(K)[:, None]).astype(np.int32)

    def sample_in_topic(self, topics: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A popularity-weighted item (0-based) of each topic; ``u`` are uniforms in [0, 1)."""
        x = self.t_lo[topics] + u * self.t_mass[topics]
        pos = np.searchsorted(self.cdf, x, side="right")
        pos = np.clip(pos, self.t_start[topics], self.t_end[topics] - 1)  # float round-off
        return self.by_topic[pos]

    def item_table(self) -> pd.DataFrame:
        names = np.array(self.genre_names, dtype=object)
        rows, cols = np.nonzero(self.item_genres)  # row-major: grouped by item, genres in order
        genres = pd.Series(names[cols]).groupby(rows).agg("|".join)
        ids = np.arange(1, self.n_items + 1)
        year = pd.array(self.year, dtype="Int64")
        title = pd.Series(ids).astype(str)
        title = "Item " + title + " (" + pd.Series(self.year).astype(str) + ")"
        return pd.DataFrame({
            "item": ids,
            "title": title,
            "genres": genres.reindex(range(self.n_items), fill_value="").to_numpy(),
            "year": year,
        })


def _make_users(rng: np.random.Generator, p: dict) -> pd.DataFrame:
    """Demographics with MovieLens-1M-like marginals; occupation depends on age."""
    n = p["n_users"]
    age_i = rng.choice(len(AGE_CODES), size=n, p=_AGE_P / _AGE_P.sum())
    female = rng.random(n) < 0.28
    occ = rng.choice(len(OCCUPATIONS), size=n, p=_OCC_P / _OCC_P.sum())
    for a, o, q in _AGE_OCC:
        occ = np.where((age_i == a) & (rng.random(n) < q), o, occ)
    return pd.DataFrame({
        "age": pd.array(AGE_CODES[age_i], dtype="Int64"),
        "gender": np.where(female, "F", "M").astype(object),
        "occupation": np.array(OCCUPATIONS, dtype=object)[occ],
        "_age_i": age_i,
        "_female": female,
        "_occ": occ,
    })


def _user_vectors(rng, p: dict, users: pd.DataFrame, world: _World) -> np.ndarray:
    """Each user's latent vector: a demographic part (shared by similar users) plus noise."""
    dim, n = p["dim"], p["n_users"]
    age_i = users.pop("_age_i").to_numpy()
    female = users.pop("_female").to_numpy()
    occ = users.pop("_occ").to_numpy()
    age_vec = rng.standard_normal((len(AGE_CODES), dim))
    gender_vec = rng.standard_normal((2, dim))
    occ_vec = 0.6 * rng.standard_normal((len(OCCUPATIONS), dim))
    demo = age_vec[age_i] + gender_vec[female.astype(int)] + occ_vec[occ]
    demo /= np.sqrt(3.0)
    # Older users lean to older topics: the era dimension follows age (centred on 25-34).
    demo[:, -1] = -(age_i - 2.5) * 0.8
    v = p["demo_weight"] * demo + rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _target_lengths(rng, p: dict, cold: np.ndarray, max_len: int) -> np.ndarray:
    """Heavy-tailed (log-normal) lengths with the requested mean for regular users; short for cold."""
    n, lo, s = p["n_users"], p["min_len"], p["len_sigma"]
    excess = max(p["mean_len"] - lo, 1e-9)
    # E[lognormal(mu, s)] = exp(mu + s^2/2) = excess; rounding down loses ~0.5 on average.
    mu = math.log(excess + 0.5) - s * s / 2
    length = lo + np.floor(rng.lognormal(mu, s, size=n)).astype(np.int64)
    cold_len = rng.integers(p["cold_min_len"], p["cold_max_len"] + 1, size=n)
    length = np.where(cold, cold_len, length)
    return np.clip(length, lo, max_len)


# --------------------------------------------------------------------------- the sequences


def _generate_chunk(rng, p: dict, world: _World, u_vec: np.ndarray, target: np.ndarray) -> dict:
    """Sequences for one chunk of users; returns user (0-based, chunk-local), item, timestamp, rating."""
    taste_t, taste_cdf = _favourite_topics(rng, p, world, u_vec)
    n_draw = _draws_per_user(world, target, taste_t, taste_cdf)
    offset = np.concatenate([[0], np.cumsum(n_draw)[:-1]])  # where each user's draws start
    items, times, liked = _draw_sequences(rng, p, world, n_draw, offset, taste_t, taste_cdf)
    user = np.repeat(np.arange(len(target), dtype=np.int64), n_draw)
    keep = _first_distinct(rng, p, world, user, items, n_draw, offset, target)
    idx = np.nonzero(keep)[0]
    rating = 3.3 + 0.7 * liked[idx] + rng.normal(0.0, 0.9, size=len(idx))
    return {
        "user": user[idx],
        "item": items[idx] + 1,
        "timestamp": times[idx],
        "rating": np.clip(np.round(rating), 1, 5).astype(np.float32),
    }


def _draws_per_user(world: _World, target: np.ndarray, taste_t: np.ndarray, taste_cdf: np.ndarray) -> np.ndarray:
    """How many items to draw for each user: more than needed, as duplicates are dropped afterwards.
    A user repeats more the longer their sequence is relative to the items their favourite topics
    hold, so they get more slack."""
    taste_cdf_w = np.diff(taste_cdf, axis=1, prepend=0.0)  # each favourite's weight
    reach = np.bincount(world.topic, minlength=world.n_topics)[taste_t]
    reach = np.where(taste_cdf_w > 0, reach, 0).sum(1) + 1
    frac = target / reach
    return np.ceil(target * (1.3 + 2.0 * np.minimum(frac, 2.0))).astype(np.int64) + 4


def _draw_sequences(rng, p: dict, world: _World, n_draw: np.ndarray, offset: np.ndarray, taste_t: np.ndarray,
                    taste_cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's draws (item, timestamp, whether it matched their taste), laid out user after
    user at ``offset``. Steps through positions for all users at once: users sorted by draws
    (longest first), so the users still active at step t are a prefix of the sorted order."""
    n, total = len(n_draw), int(n_draw.sum())
    order = np.argsort(-n_draw, kind="stable")
    n_draw_s, off_s = n_draw[order], offset[order]
    taste_t, taste_cdf = taste_t[order], taste_cdf[order]
    active_at = np.bincount(np.minimum(n_draw_s, n_draw_s.max()), minlength=int(n_draw_s.max()) + 1)
    active_at = n - np.cumsum(active_at)  # active_at[t] = users with more than t draws

    items = np.empty(total, dtype=np.int32)
    times = np.empty(total, dtype=np.int64)
    liked = np.empty(total, dtype=bool)
    prev = np.zeros(n, dtype=np.int64)
    intent = np.zeros(n, dtype=np.int64)
    clock = _T0 + (rng.random(n) * _START_SPAN).astype(np.int64)
    for t in range(int(n_draw_s.max())):
        m = int(active_at[t])
        item, new_session, explore = _next_items(rng, p, world, t, m, prev, intent, taste_t, taste_cdf)
        gap_in = np.where(rng.random(m) < p["p_tie"], 0, rng.exponential(300.0, size=m).astype(np.int64) + 1)
        gap_out = (rng.lognormal(math.log(86_400), 1.2, size=m)).astype(np.int64) + 3_600
        clock[:m] += np.where(new_session, np.where(t == 0, 0, gap_out), gap_in)

        dest = off_s[:m] + t
        items[dest] = item
        times[dest] = clock[:m]
        liked[dest] = ~explore
    return items, times, liked


def _next_items(rng, p: dict, world: _World, t: int, m: int, prev: np.ndarray, intent: np.ndarray,
                taste_t: np.ndarray, taste_cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step ``t``'s item for the ``m`` users still drawing, and for each whether a new session
    starts and whether the pick explored; ``prev`` and ``intent`` move on in place."""
    b_follow = p["p_follow"]
    b_session = b_follow + p["p_session"]
    b_explore = 1.0 - p["p_explore"]  # r >= this: explore; between b_session and this: taste
    r = rng.random(m)
    new_session = np.ones(m, dtype=bool) if t == 0 else rng.random(m) < p["p_new_session"]
    # A new session starts from long-term taste (or exploration), never from the old intent.
    to_taste = r / max(b_session, 1e-12) * (b_explore - b_session)
    r = np.where(new_session & (r < b_session), b_session + to_taste, r)
    follow = r < b_follow
    session = (r >= b_follow) & (r < b_session)
    explore = r >= b_explore

    it = intent[:m]
    drift = rng.random(m) < p["p_drift"]
    it = np.where(drift, world.neighbours[it, rng.integers(world.neighbours.shape[1], size=m)], it)
    ut = rng.random(m)
    fav = taste_t[np.arange(m), (ut[:, None] > taste_cdf[:m]).sum(1)]
    glob = np.minimum(np.searchsorted(world.topic_cdf, ut), world.n_topics - 1)
    topic = np.where(session, it, np.where(explore, glob, fav))
    item = world.sample_in_topic(topic, rng.random(m))
    if t > 0:
        succ = world.successors[prev[:m], rng.integers(_N_SUCCESSORS, size=m)]
        item = np.where(follow, succ, item)
    # Taste and exploration picks reset the intent; following a sequel keeps it in the
    # sequel's topic (the same as the previous item's).
    intent[:m] = np.where(session, it, world.topic[item])
    prev[:m] = item
    return item, new_session, explore


def _first_distinct(rng, p: dict, world: _World, user: np.ndarray, items: np.ndarray, n_draw: np.ndarray,
                    offset: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Which draws to keep: repeats of an item within a user dropped (a few kept as re-watches),
    then each user's first ``target`` draws. Users who ran short of distinct items keep their
    first min_len draws even if repeated, so the floor always holds."""
    n, total = len(target), len(items)
    pos = np.arange(total, dtype=np.int64) - np.repeat(offset, n_draw)
    dup = pd.Series(user * world.n_items + items).duplicated().to_numpy()
    keep = ~dup | (rng.random(total) < p["repeat_prob"])
    n_kept = np.bincount(user[keep], minlength=n)
    keep |= (n_kept < p["min_len"])[user] & (pos < p["min_len"])
    rank = np.cumsum(keep) - 1
    start_rank = np.concatenate([[0], np.cumsum(np.bincount(user[keep], minlength=n))[:-1]])
    keep &= (rank - start_rank[user]) < target[user]
    return keep


def _favourite_topics(rng, p: dict, world: _World, u_vec: np.ndarray):
    """Each user's favourite topics and the CDF of their weights: (n, T) topics, (n, T) cdf."""
    n, K = len(u_vec), world.n_topics
    T = min(_TOP_TOPICS, K)
    topics = np.empty((n, T), dtype=np.int32)
    cdf = np.empty((n, T), dtype=np.float32)
    # How many favourites a user has: 2..T (some focused users, some broad ones).
    n_fav = rng.integers(min(2, T), T + 1, size=n)
    log_mass = np.log(world.t_mass / world.t_mass.sum())
    for lo in range(0, n, 16_384):  # (users x topics) scores stay small
        hi = min(lo + 16_384, n)
        s = (u_vec[lo:hi] @ world.centroid.T.astype(np.float32)) / p["taste_temp"]
        s = s + 0.3 * log_mass + rng.gumbel(size=s.shape)  # popular topics a bit more often
        top = np.argpartition(-s, T - 1, axis=1)[:, :T] if T < K else np.tile(np.arange(K), (hi - lo, 1))
        ts = np.take_along_axis(s, top, axis=1)
        o = np.argsort(-ts, axis=1)
        top, ts = np.take_along_axis(top, o, axis=1), np.take_along_axis(ts, o, axis=1)
        w = np.exp(ts - ts[:, :1])
        w[np.arange(T)[None, :] >= n_fav[lo:hi, None]] = 0.0
        c = np.cumsum(w, axis=1)
        c /= c[:, -1:]
        c[:, -1] = 1.0 + 1e-6  # a uniform in [0, 1) never falls past the last favourite
        topics[lo:hi], cdf[lo:hi] = top, c
    return topics, cdf


def _concat_and_free(parts: dict, key: str) -> np.ndarray:
    arr = np.concatenate(parts[key])
    parts[key].clear()
    return arr
