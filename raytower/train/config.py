"""The training config: one dataclass, its defaults, and the checks that give one-line errors.

The same format is what ``raytower train --config`` reads and what a search exports in
``best_config.json`` ("params"). Every field may be named in a search space.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from raytower._io import load_user_yaml, read_user_text
from raytower.errors import ConfigError

FUSION_TYPES = ("concat", "gated", "moe")
VAL_USERS_AUTO = 20_000  # SE of a Recall@100 near 0.4 on this many users: about 0.0035
# Upper bounds that catch a typo before it allocates (max_len 1e9 asked for a 64 GB table).
# gnn_window 1e9 asked for 32 TB (the history vector pads the sequence by it); past max_len it changes nothing
LIMITS = {"dim": 4096, "max_len": 10_000, "gnn_window": 10_000, "n_blocks": 64, "n_heads": 256, "n_experts": 256,
          "item_layers": 64, "batch_size": 1 << 20, "epochs": 100_000}
POOLING_TYPES = ("last", "attention")
LOGQ_TYPES = ("frequency", "inclusion")
TARGET_TYPES = ("all", "last")
LOSS_TYPES = ("inbatch", "full")
SCORE_TYPES = ("cosine", "dot")
GNN_VECTOR_TYPES = ("table", "history")
SEQ_ITEMS_TYPES = ("own", "tied")
BATCH_TYPES = ("by_length", "random")
CHOICES = {"fusion": FUSION_TYPES, "pooling": POOLING_TYPES, "logq": LOGQ_TYPES, "targets": TARGET_TYPES,
           "loss": LOSS_TYPES, "score": SCORE_TYPES, "gnn_vector": GNN_VECTOR_TYPES, "seq_items": SEQ_ITEMS_TYPES,
           "batches": BATCH_TYPES}


@dataclass
class TrainConfig:
    # --- model --------------------------------------------------------------------------------
    # The towers: "raytower" (built in: a pretrained item tower; LightGCN, sequence and meta fused in
    # the user tower), or a team's own as "package.module:build" (raytower.model.towers' protocol),
    # which gets model_args; the fields from dim to gnn_dropout configure the built-in towers
    model: str = "raytower"
    model_args: dict = dataclasses.field(default_factory=dict)
    dim: int = 64  # embedding size of both towers (and of LightGCN)
    max_len: int = 200  # the sequence encoder sees the last max_len items
    n_blocks: int = 2  # Transformer blocks in the sequence encoder
    n_heads: int = 2
    dropout: float = 0.2
    pooling: str = "last"  # last | attention (attention pooling over the prefix)
    fusion: str = "gated"  # concat | gated | moe
    n_experts: int = 4  # moe only
    item_layers: int = 3  # residual blocks of the item tower, under its projection head
    gnn_dropout: float = 0.3  # train-time chance of hiding a user's GNN vector (the leak: docs/curriculum.md)
    # The long-term vector: table = the user's LightGCN row (built from every train item, so it has
    # seen the targets of a training sequence's early positions: the leak); history = the mean of the
    # LightGCN item vectors of the gnn_window items up to each position (causal: no leak, one vector
    # per position, and a user outside the graph gets one too)
    gnn_vector: str = "table"
    gnn_window: int = 50
    # What the sequence encoder reads for each item: own = its own id table (started at the item
    # tower's vectors, then trained apart from them); tied = the item tower's vectors themselves, as
    # SASRec ties its input and output embeddings: every step that trains the item tower trains the
    # encoder's inputs too (a copy taken each epoch makes the user tower stand alone to evaluate and export)
    seq_items: str = "own"
    # cosine: both towers' vectors are unit length, a score is a cosine over the temperature;
    # dot: raw dot products (over the temperature: hold it at 1 for SASRec's plain dot product)
    score: str = "cosine"
    # --- optimisation -------------------------------------------------------------------------
    # inbatch: a softmax over the batch's distinct positives, logQ-corrected (what scales to
    # millions of items); full: a softmax over every item, no sampling and so no logQ (SASRec+)
    loss: str = "inbatch"
    lr: float = 1e-3  # user-tower learning rate
    weight_decay: float = 0.0
    batch_size: int = 128  # users per step; with targets=last, also the rows (training examples) per step
    # all: every position of each sequence is a training example; last: only each sequence's last
    # item (one row per user), as the seed trained
    targets: str = "all"
    # by_length: a batch holds users of similar history length (little padding, the fastest), so a
    # batch of short histories weighs each of its positions more in its step's mean; random: each
    # batch a random set of users, every position weighing alike across the epoch's steps (SASRec+'s)
    batches: str = "by_length"
    epochs: int = 100
    # Stop after this many epochs without a better validation metric, counted once Stage 2 and the
    # logQ ramp have begun (before that a flat curve is the curriculum at work); 0: off
    patience: int = 0
    seed: int = 0
    # --- temperature: tau(epoch) = max(temp_min, temp_start * anneal_rate ** epoch) ------------
    temp_start: float = 0.5
    anneal_rate: float = 0.85
    temp_min: float = 0.05
    # --- logQ: lambda = 0 for logq_warmup_epochs, then linear to logq_max over logq_ramp_epochs -
    logq_warmup_epochs: int = 2
    logq_max: float = 0.05
    logq_ramp_epochs: int = 5
    # What lambda multiplies: frequency = log p_j (p_j: share of the train interactions, add-one
    # smoothed); inclusion = log(1 - (1 - p_j)^T), the chance that j is among the step's distinct
    # candidates, T = the step's number of targets
    logq: str = "frequency"
    logq_positive: bool = True  # also correct each row's own positive (False: only its negatives)
    # --- curriculum: leave Stage 1 at the first of these; thresholds are relative to the data --
    stage1_max_epochs: int = 10  # 0: no Stage 1, Stage 2's unfreezing from the first step
    stage2_min_recall: float = 1.0  # x popularity's validation Recall@100
    stage2_max_loss: float = 0.6  # x the random-guess loss
    unfreeze_depth: int = 1  # Stage 2: 0 = item tower stays frozen, 1 = head, 2 = head + top block...
    lr_ratio: float = 0.01  # Stage 2 item-tower LR = lr * lr_ratio
    gnn_unfreeze: bool = False  # Stage 2 also trains the LightGCN user table (then checkpoints carry it)
    gnn_lr_ratio: float = 0.01  # its LR = lr * gnn_lr_ratio
    # --- evaluation -----------------------------------------------------------------------------
    # Per-epoch validation on a seeded sample of this many users, the same for every trial; 0: all
    # of them; -1 (auto): all up to VAL_USERS_AUTO, a sample of VAL_USERS_AUTO above. Test: all.
    val_users: int = -1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str | None = None) -> None:
        def bad(msg: str):
            raise ConfigError(msg, source)

        for f in fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}[f.type] if isinstance(f.type, str) else f.type
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f.name, float(v))
                continue
            if not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
                bad(f"{f.name} must be {want.__name__}, got {reprlib.repr(v)}")
            if want is float and not math.isfinite(v):
                bad(f"{f.name} must be finite, got {v!r}")
        positive = ["dim", "gnn_window", "max_len", "n_blocks", "n_heads", "n_experts", "batch_size", "lr",
                    "temp_start", "temp_min", "lr_ratio", "gnn_lr_ratio", "epochs"]
        for name in positive:
            if getattr(self, name) <= 0:
                bad(f"{name} must be > 0, got {getattr(self, name)}")
        for name, most in LIMITS.items():
            if getattr(self, name) > most:
                bad(f"{name} must be at most {most:,}, got {getattr(self, name):,}")
        if not 0 <= self.seed < 2**63:
            bad(f"seed must be in [0, 2**63), got {self.seed}")
        if self.val_users < -1:
            bad(f"val_users must be -1 (auto), 0 (all) or a number of users, got {self.val_users}")
        non_negative = ["item_layers", "weight_decay", "logq_warmup_epochs", "logq_max",
                        "logq_ramp_epochs", "stage1_max_epochs", "stage2_min_recall", "stage2_max_loss",
                        "unfreeze_depth", "patience"]
        for name in non_negative:
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "gnn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                bad(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.anneal_rate <= 1:
            bad(f"anneal_rate must be in (0, 1], got {self.anneal_rate}")
        if self.temp_min > self.temp_start:
            bad(f"temp_min ({self.temp_min}) must not exceed temp_start ({self.temp_start})")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                what = "fusion type" if name == "fusion" else name
                bad(f"unknown {what} {getattr(self, name)!r}; choose one of {', '.join(choices)}")
        if self.model != "raytower" and (":" not in self.model or not all(self.model.partition(":")[::2])):
            bad(f"model must be 'raytower' or 'package.module:function', got {self.model!r}")
        if any(not isinstance(k, str) for k in self.model_args):
            bad("model_args must be a mapping with string keys")
        if self.gnn_unfreeze and self.gnn_vector != "table":
            bad("gnn_unfreeze trains the LightGCN user table, which gnn_vector: history does not use")
        if self.seq_items == "tied" and self.model != "raytower":
            bad("seq_items: tied reads the built-in item tower's vectors; a model of your own ties its inputs itself")
        if self.dim % self.n_heads:
            bad(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.unfreeze_depth > self.item_layers + 2:
            bad(f"unfreeze_depth ({self.unfreeze_depth}) exceeds item_layers + 2 ({self.item_layers + 2}): "
                "1 = head, item_layers + 1 = every block, item_layers + 2 = the embeddings too")

    def advice(self) -> list[str]:
        """Settings that are allowed but probably not meant; each a one-line warning."""
        out = []
        if self.lr_ratio > 1:
            out.append(f"lr_ratio {self.lr_ratio:g} > 1: Stage 2 would train the item tower faster than the user "
                       "tower, where the curriculum means it to move slowly (0.01 by default)")
        if self.gnn_unfreeze and self.gnn_lr_ratio > 1:
            out.append(f"gnn_lr_ratio {self.gnn_lr_ratio:g} > 1: Stage 2 would train the LightGCN table faster "
                       "than the user tower (0.01 by default)")
        return out

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of config fields, got {type(d).__name__}", source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}", source)
        cfg = cls.__new__(cls)
        for f in fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            setattr(cfg, f.name, d.get(f.name, default))
        cfg.validate(source)
        return cfg

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """A JSON or YAML file of config fields, or a ``best_config.json`` (its "params" are used)."""
        path = Path(path)
        text = read_user_text(path, "JSON or YAML config")
        try:
            data = json.loads(text) if path.suffix == ".json" else load_user_yaml(text, path, "config")
        except json.JSONDecodeError as e:
            raise ConfigError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path) from None
        if isinstance(data, dict) and "selection" in data:  # a best_config.json
            if not isinstance(data.get("params"), dict):
                raise ConfigError("a best_config.json without its 'params' mapping", path)
            data = data["params"]
        return cls.from_dict(data if data is not None else {}, source=str(path))
