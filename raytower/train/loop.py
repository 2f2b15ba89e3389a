"""The one training loop: the two-stage curriculum, epoch by epoch.

``raytower train``, the Tune function trainable and the Ray Train worker all drive this class,
through the one outer loop ``raytower.train.epochs.run_epochs``:

    run = Curriculum.create(cfg, bundle, artifacts)   # seeds, builds the model and the data
    while not run.done:
        row = run.step()          # one epoch: train, evaluate validation, maybe switch stage
        save(run.state_dict())    # everything needed to resume exactly here

Stage 1: item tower and GNN table frozen (requires_grad off, outside the optimizer); the sequence
encoder, meta encoder and fusion train. Stage 2 (at the first of: validation Recall@100 reaches
``stage2_min_recall`` x popularity's, train loss falls to ``stage2_max_loss`` x the random-guess
loss, ``stage1_max_epochs`` epochs): the top ``unfreeze_depth`` pieces of the item tower join in
their own optimizer group at ``lr * lr_ratio``, and with ``gnn_unfreeze`` the LightGCN user table in
another at ``lr * gnn_lr_ratio``. ``stage1_max_epochs = 0``: Stage 2 from the first step.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from raytower.model.build import TwoTower, build_model
from raytower.model.pretrain import Artifacts
from raytower.model.towers import BUILTIN, needs_pretraining, user_forward
from raytower.train._stages import switch_reason, unfreeze_for_stage2
from raytower.train._towers import TrainedTowers
from raytower.train.config import TrainConfig
from raytower.train.data import TrainData, epoch_batches, training_targets
from raytower.train.evaluate import evaluate, popularity
from raytower.train.loss import candidates, inbatch_softmax, log_inclusion_prob
from raytower.train.schedules import logq_weight, temperature

CHECKPOINT_FORMAT = 1


class Curriculum:
    """The two-stage curriculum over one model: its optimizer, the stage it is in, one epoch's step,
    and the state a checkpoint holds. ``create`` seeds the RNG and builds the model and the data.
    The stage rules are ``raytower.train._stages``'; which parts train, and their DDP wrapping,
    ``towers`` (``raytower.train._towers``)."""

    def __init__(self, cfg: TrainConfig, model: TwoTower, data: TrainData, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.model, self.data, self.device = cfg, model, data, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.all_positions = bool(getattr(model.user_tower, "all_positions", False))
        if cfg.targets == "all" and not self.all_positions:
            from raytower.errors import ConfigError

            raise ConfigError(f"targets: all trains every position, but the user tower of model {cfg.model!r} returns "
                              "one vector per user (no all_positions): set targets: last")
        self.popularity = popularity(data.bundle)
        self.epoch = 0  # epochs completed
        self.stage = 1
        self.switch: dict | None = None  # {"epoch": ..., "reason": ...}
        self.history: list[dict] = []
        self.optimizer = torch.optim.Adam(model.user_tower.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.towers = TrainedTowers(model, self.device, world_size)
        self.all_items = torch.arange(1, data.bundle.n_items + 1, device=self.device)  # loss: full
        self.on_batch: Callable[[int, int], None] | None = None  # (batches done, of) for progress
        if cfg.stage1_max_epochs == 0:  # no Stage 1: everything Stage 2 unfreezes trains from the start
            self._enter_stage2("stage1_max_epochs 0: no Stage 1")
        elif not needs_pretraining(cfg.model):  # a frozen random item tower has nothing to keep
            self._enter_stage2("towers without pretraining: no Stage 1")

    @classmethod
    def create(cls, cfg: TrainConfig, bundle, artifacts: Artifacts | None, device: str | torch.device = "cpu",
               rank: int = 0, world_size: int = 1) -> "Curriculum":
        seed_everything(cfg.seed)
        model = build_model(cfg, bundle, artifacts, device)
        return cls(cfg, model, TrainData.build(bundle, cfg.max_len, device, cfg.val_users), device, rank, world_size)

    @property
    def user_tower(self):
        return self.model.user_tower

    @property
    def item_tower(self):
        return self.model.item_tower

    @property
    def item_cache(self) -> torch.Tensor:
        """Every item's vector as the item tower stands: what validation ranks against."""
        return self.towers.item_cache

    @item_cache.setter
    def item_cache(self, vectors: torch.Tensor) -> None:
        self.towers.item_cache = vectors

    # ------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def tau(self) -> float:
        c = self.cfg
        return temperature(self.epoch, c.temp_start, c.anneal_rate, c.temp_min)

    def logq_weight(self) -> float:
        """This epoch's weight of the logQ correction (lambda, the row's "lambda")."""
        c = self.cfg
        if c.loss == "full":  # every item is a candidate: nothing was sampled, nothing to correct
            return 0.0
        return logq_weight(self.epoch, c.logq_warmup_epochs, c.logq_max, c.logq_ramp_epochs)

    # --- the epoch ----------------------------------------------------------------------------
    def step(self) -> dict:
        """Train one epoch, evaluate validation, decide the stage switch; return the epoch's row."""
        t0, c0 = time.perf_counter(), time.process_time()
        tau, lam = self.tau(), self.logq_weight()
        train = self._train_epoch(tau, lam)
        val, diag = self.evaluate("val")
        self.epoch += 1
        nan = float("nan")
        row = {
            "epoch": self.epoch, "stage": self.stage, "tau": tau, "lambda": lam,
            "loss": train["loss"], "loss_random": train["loss_random"], "ln_candidates": train["ln_candidates"],
            "gate_mean_train": train.get("gate_mean_train", nan),
            **{f"val/{k}": v for k, v in val.items()},
            # Its standard error: the validation users may be a sample (val_users).
            "val/recall@100_se": math.sqrt(val["recall@100"] * (1 - val["recall@100"]) / max(val["n_users"], 1)),
            "val/below_popularity": float(val["recall@100"] < self.popularity["val"]["recall@100"]),
            "gate_mean": nan, "gate_mean_cold": nan, "gate_mean_warm": nan, **diag,
            "epoch_time_s": time.perf_counter() - t0, "epoch_cpu_s": time.process_time() - c0,
        }
        # A NaN loss, or scores that are not numbers (see metrics): nothing past this epoch counts.
        row["diverged"] = float(not (math.isfinite(row["loss"]) and math.isfinite(row["val/recall@100"])))
        if self.stage == 1 and not row["diverged"]:
            reason = switch_reason(self.cfg, row, self.epoch, self.popularity["val"]["recall@100"])
            if reason:
                self._enter_stage2(reason)
                row["stage_switch"] = reason
        self.history.append(row)
        return row

    def train_epoch(self) -> dict:
        """Train one epoch at this epoch's temperature and logQ weight, and nothing else: no
        validation, no stage switch, ``epoch`` not advanced (``step`` does all three)."""
        return self._train_epoch(self.tau(), self.logq_weight())

    def _enter_stage2(self, reason: str) -> None:
        self.stage = 2
        self.switch = {"epoch": self.epoch, "reason": reason}
        unfreeze_for_stage2(self.cfg, self.towers, self.optimizer)

    def _batches(self) -> list[torch.Tensor]:
        """This rank's batches of this epoch (``data.epoch_batches``), on the device."""
        rows = epoch_batches(self.data.train_lens, self.cfg.batch_size, self.cfg.seed, self.epoch,
                             self.rank, self.world_size, by_length=self.cfg.batches == "by_length")
        return [torch.as_tensor(b, device=self.device) for b in rows]

    def _train_epoch(self, tau: float, lam: float) -> dict:
        """Every batch of the epoch, one optimizer step each; the epoch's mean loss figures."""
        self.towers.train()
        users_all = torch.as_tensor(self.data.train_users, device=self.device)
        tot = {"loss": 0.0, "loss_random": 0.0, "ln_candidates": 0.0, "gate": 0.0}
        n_rows = 0
        batches = self._batches()
        for k, idx in enumerate(batches):
            n, figures = self._train_step(users_all[idx], idx, tau, lam)
            n_rows += n
            for key, value in figures.items():
                tot[key] += value * n
            if self.on_batch:
                self.on_batch(k + 1, len(batches))
        if self.world_size > 1:  # every rank must see the same epoch loss: it can trigger Stage 2
            tot, n_rows = _summed_over_ranks(tot, n_rows, self.device)
        out = {k: v / max(n_rows, 1) for k, v in tot.items()}
        if self.cfg.fusion == "gated":
            out["gate_mean_train"] = out["gate"]
        self.towers.refresh_item_cache()
        self._sync_tied_inputs()
        return out

    def _train_step(self, users: torch.Tensor, idx: torch.Tensor, tau: float, lam: float) -> tuple[int, dict]:
        """One optimizer step on one batch: (its training rows, its per-row loss figures)."""
        data, cfg = self.data, self.cfg
        rows = idx.cpu().numpy()
        seqs = data.train_batch(rows, int(data.train_lens[rows].max()))  # padded to its longest
        inp, tgt, valid = training_targets(seqs, cfg.targets)
        if cfg.loss == "full":  # every item a candidate: column j - 1 is item j
            cand, labels = self.all_items, tgt[valid] - 1
        else:
            cand, labels = candidates(tgt[valid])
        if cfg.seq_items == "tied":  # one pass of the item tower feeds both the inputs and the candidates
            # only the items this step reads or scores: a catalogue of millions is never run whole
            ids, where = torch.unique(torch.cat([inp.flatten(), cand]), return_inverse=True)
            vectors = self.towers.candidate_vectors(ids)
            u = self._user_vectors(users, inp, valid, tied_inputs=(ids, vectors))
            v = F.embedding(where[inp.numel():], vectors)
        else:
            u = self._user_vectors(users, inp, valid)
            v = self.towers.candidate_vectors(cand)
        log_q = data.log_q[cand]
        if cfg.logq == "inclusion" and lam:
            # T is this step's number of targets: batches are sorted by length, so it varies.
            log_q = log_inclusion_prob(log_q, len(labels))
        loss, random_loss = inbatch_softmax(u, v, labels, log_q, tau, lam, cfg.logq_positive)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        figures = {"loss": loss.item(), "loss_random": random_loss.item(), "ln_candidates": math.log(len(cand))}
        gate = getattr(getattr(self.user_tower, "fusion", None), "last_gate", None)
        if gate is not None and cfg.fusion == "gated" and cfg.model == BUILTIN:
            figures["gate"] = gate[valid].mean().item()
        return int(valid.sum()), figures

    def _user_vectors(self, users: torch.Tensor, inp: torch.Tensor, valid: torch.Tensor,
                      tied_inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The training rows' user vectors; with ``tied_inputs`` the sequence encoder reads those."""
        seq = self.user_tower.seq if tied_inputs is not None else None
        if seq is not None:
            seq.tied_inputs = tied_inputs
        try:
            return user_forward(self.towers.user_module, users, inp, self.data.meta[users],
                                self.cfg.targets == "last", self.all_positions)[valid]
        finally:
            if seq is not None:
                seq.tied_inputs = None

    def _sync_tied_inputs(self) -> None:
        """``seq_items: tied``: the encoder's own table becomes the item tower's vectors as they stand,
        so validation, checkpoints and exports read the user tower alone, as training saw it."""
        if self.cfg.seq_items == "tied":
            with torch.no_grad():
                self.user_tower.seq.item_emb.weight.copy_(self.item_cache)

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, split: str) -> tuple[dict, dict]:
        """(metrics, diagnostics) of ``split`` with the item vectors as they stand."""
        return evaluate(self.model, self.data, split, self.item_cache)

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The trainable state only: frozen pretrained artifacts are referenced, not copied."""
        depth = self.cfg.unfreeze_depth if self.stage == 2 else 0
        item_state = {}
        for k, piece in enumerate(self.item_tower.pieces()[:depth]):
            item_state[str(k)] = piece.state_dict()
        return {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "epoch": self.epoch, "stage": self.stage,
            "switch": self.switch, "history": self.history,
            "user_tower": self.user_tower.state_dict(), "item_tower_top": item_state,
            "optimizer": self.optimizer.state_dict(),
            # Shuffling has its own per-epoch generator; the global one only drives dropout.
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        with _checkpoint_errors():
            self.epoch, self.history = int(state["epoch"]), list(state["history"])
            if state["stage"] == 2:
                if self.stage == 1:  # (a run without Stage 1 entered Stage 2 when it was created)
                    self._enter_stage2(state["switch"]["reason"])
                self.switch = state["switch"]
            load_model_state(self.model, state)
            self.item_cache = self.model.item_vectors()
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])


def _summed_over_ranks(tot: dict[str, float], n_rows: int, device: torch.device) -> tuple[dict[str, float], int]:
    """The epoch's sums over every DDP rank, so that each rank sees the same epoch loss."""
    import torch.distributed as dist

    sums = torch.tensor([*tot.values(), n_rows], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return dict(zip(tot, sums[:-1].tolist())), int(sums[-1].item())


def load_model_state(model: TwoTower, state: dict) -> None:
    """A checkpoint's weights into ``model``: the user tower and, after Stage 2, the unfrozen top of
    the item tower. Enough to evaluate or export; training state (optimizer, RNG) stays out."""
    with _checkpoint_errors():
        model.user_tower.load_state_dict(state["user_tower"])
        for k, piece in enumerate(model.item_tower.pieces()[:len(state["item_tower_top"])]):
            piece.load_state_dict(state["item_tower_top"][str(k)])


def load_model(state: dict, bundle, artifacts: Artifacts, device: str | torch.device = "cpu") -> TwoTower:
    """The model a checkpoint describes, built from its own config. The caller's RNG is left as it
    was (the fresh weights are overwritten anyway), and there is no optimizer."""
    cfg = TrainConfig.from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, bundle, artifacts, device)
    load_model_state(model, state)
    return model


@contextlib.contextmanager
def _checkpoint_errors():
    """A checkpoint from another model shape (or a damaged one) is one ConfigError line."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        from raytower.errors import ConfigError

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"checkpoint does not fit this model ({first[:200]})") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
