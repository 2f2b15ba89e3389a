"""The one training loop: the two-stage curriculum, epoch by epoch.

``raytower train``, the Tune function trainable and the Ray Train worker all drive this class:

    run = Curriculum(cfg, bundle, artifacts)
    while not run.done:
        row = run.step()          # one epoch: train, evaluate validation, maybe switch stage
        save(run.state_dict())    # everything needed to resume exactly here

Stage 1: item tower and GNN table frozen (requires_grad off, outside the optimizer); the sequence
encoder, meta encoder and fusion train. Stage 2 (at the first of: validation Recall@100 reaches
``stage2_min_recall`` x popularity's, train loss falls to ``stage2_max_loss`` x the random-guess
loss, ``stage1_max_epochs`` epochs): the top ``unfreeze_depth`` pieces of the item tower join in
their own optimizer group at ``lr * lr_ratio``.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
import torch.nn as nn

from raytower.model.pretrain import Artifacts, build_item_tower
from raytower.model.two_tower import HybridUserTower
from raytower.train import metrics as M
from raytower.train.config import TrainConfig
from raytower.train.loss import candidates, inbatch_softmax, log_sampling_prob
from raytower.train.schedules import logq_weight, temperature

META_COLUMNS = ("age_bucket", "gender_idx", "occupation_idx")


def left_padded(offsets: np.ndarray, items: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` items of each CSR row in ``rows``, right-aligned, 0-padded on the left."""
    out = np.zeros((len(rows), width), dtype=np.int64)
    ends = offsets[rows + 1]
    lens = np.minimum(ends - offsets[rows], width)
    r = np.repeat(np.arange(len(rows)), lens)
    within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    cols = width - np.repeat(lens, lens) + within
    out[r, cols] = items[np.repeat(ends - lens, lens) + within]
    return out


def popularity_metrics(bundle, split: str) -> dict[str, float]:
    """The popularity baseline, through the same ranking code as the model."""
    ev = bundle.eval_set(split)
    counts = torch.as_tensor(bundle.item_counts, dtype=torch.float32)[:, None]
    ranks, top = M.rank_targets(torch.ones(len(ev), 1), counts, ev.targets, ev.hist_offsets, ev.hist_items)
    return M.summarize(ranks, top, ev.users, ev.targets, bundle.cold_mask, M.tail_items(bundle.item_counts), bundle.n_items)


class Curriculum:
    def __init__(self, cfg: TrainConfig, bundle, artifacts: Artifacts, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.bundle, self.device = cfg, bundle, torch.device(device)
        self.rank, self.world_size = rank, world_size
        seed_everything(cfg.seed)
        dev = self.device
        # --- towers --------------------------------------------------------------------------
        self.item_tower = build_item_tower(bundle, cfg.dim, cfg.item_layers)
        self.item_tower.load_state_dict(artifacts.item_tower, strict=False)
        self.item_tower.requires_grad_(False).eval().to(dev)
        graph_users = torch.as_tensor(~bundle.cold_mask)
        graph_users[0] = False
        self.user_tower = HybridUserTower(cfg, bundle.n_items, artifacts.gnn_user, graph_users,
                                          bundle.meta_cardinalities).to(dev)
        with torch.no_grad():  # the sequence side starts in the item tower's space
            self.user_tower.seq.item_emb.weight.copy_(self._all_item_vectors() / cfg.dim**0.5)
        self.user_module: nn.Module = self._wrap(self.user_tower)
        self.item_top: nn.Module | None = None  # Stage 2: the unfrozen top of the item tower
        # --- data, all tensors built once ----------------------------------------------------
        off, items = bundle.train_sequences
        users = np.flatnonzero(np.diff(off) >= 2)  # a training example needs an input and a target
        self.train_users = users
        self.train_seqs = torch.as_tensor(left_padded(off, items, users, cfg.max_len + 1), device=dev)
        self.train_lens = np.minimum(np.diff(off)[users], cfg.max_len + 1)
        self.meta = torch.as_tensor(np.stack([bundle.user_feature(c) for c in META_COLUMNS], 1), device=dev)
        self.log_q = log_sampling_prob(torch.as_tensor(bundle.item_counts)).to(dev)
        self.tail = M.tail_items(bundle.item_counts)
        self.eval_sets = {s: bundle.eval_set(s) for s in ("val", "test")}
        self.eval_inputs = {
            s: torch.as_tensor(left_padded(ev.hist_offsets, ev.hist_items, np.arange(len(ev)), cfg.max_len), device=dev)
            for s, ev in self.eval_sets.items()
        }
        self.popularity = {s: popularity_metrics(bundle, s) for s in ("val", "test")}
        # --- state ---------------------------------------------------------------------------
        self.epoch = 0  # epochs completed
        self.stage = 1
        self.switch: dict | None = None  # {"epoch": ..., "reason": ...}
        self.history: list[dict] = []
        self.item_base: torch.Tensor | None = None
        self.item_level = 0
        self.optimizer = torch.optim.Adam(self.user_tower.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.item_cache = self._all_item_vectors()

    # ------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def tau(self) -> float:
        c = self.cfg
        return temperature(self.epoch, c.temp_start, c.anneal_rate, c.temp_min)

    def lam(self) -> float:
        c = self.cfg
        return logq_weight(self.epoch, c.logq_warmup_epochs, c.logq_max, c.logq_ramp_epochs)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids)
        return module

    @torch.no_grad()
    def _all_item_vectors(self) -> torch.Tensor:
        self.item_tower.eval()
        return self.item_tower(torch.arange(self.bundle.n_items + 1, device=self.device))

    def _candidate_vectors(self, cand: torch.Tensor) -> torch.Tensor:
        if self.item_top is None:
            return self.item_cache[cand]
        if self.item_base is None:  # the embeddings train too: the whole tower runs
            return self.item_top(cand)
        return self.item_top(self.item_base[cand])

    # --- the epoch ----------------------------------------------------------------------------
    def step(self) -> dict:
        """Train one epoch, evaluate validation, decide the stage switch; return the epoch's row."""
        t0, c0 = time.perf_counter(), time.process_time()
        tau, lam = self.tau(), self.lam()
        train = self._train_epoch(tau, lam)
        val = self.evaluate("val")
        self.epoch += 1
        row = {
            "epoch": self.epoch, "stage": self.stage, "tau": tau, "lambda": lam,
            "loss": train["loss"], "loss_random": train["loss_random"], "ln_candidates": train["ln_candidates"],
            "gate_mean_train": train.get("gate_mean_train", float("nan")),
            **{f"val/{k}": v for k, v in val.items() if not k.startswith("_")},
            "val/below_popularity": float(val["recall@100"] < self.popularity["val"]["recall@100"]),
            "effective_rank": val["_effective_rank"], "uniformity": val["_uniformity"],
            "gate_mean": val.get("_gate_mean", float("nan")),
            "gate_mean_cold": val.get("_gate_mean_cold", float("nan")),
            "gate_mean_warm": val.get("_gate_mean_warm", float("nan")),
            **{k[1:]: v for k, v in val.items() if k.startswith("_expert")},
            "epoch_time_s": time.perf_counter() - t0, "epoch_cpu_s": time.process_time() - c0,
        }
        # A NaN loss, or scores that are not numbers (see metrics): nothing past this epoch counts.
        row["diverged"] = float(not (math.isfinite(row["loss"]) and math.isfinite(row["val/recall@100"])))
        if self.stage == 1 and not row["diverged"]:
            reason = self._switch_reason(row)
            if reason:
                self._enter_stage2(reason)
                row["stage_switch"] = reason
        self.history.append(row)
        return row

    def _switch_reason(self, row: dict) -> str | None:
        c = self.cfg
        pop = self.popularity["val"]["recall@100"]
        if c.stage2_min_recall > 0 and row["val/recall@100"] >= c.stage2_min_recall * pop:
            return f"val recall@100 {row['val/recall@100']:.3f} >= {c.stage2_min_recall:g} x popularity {pop:.3f}"
        if c.stage2_max_loss > 0 and row["loss"] <= c.stage2_max_loss * row["loss_random"]:
            return f"loss {row['loss']:.3f} <= {c.stage2_max_loss:g} x random-guess {row['loss_random']:.3f}"
        if self.epoch >= c.stage1_max_epochs:
            return f"stage1_max_epochs ({c.stage1_max_epochs}) reached"
        return None

    def _enter_stage2(self, reason: str) -> None:
        self.stage = 2
        self.switch = {"epoch": self.epoch, "reason": reason}
        depth = self.cfg.unfreeze_depth
        if depth == 0:
            return
        pieces = self.item_tower.stages()[:depth]
        for p in pieces:
            p.requires_grad_(True)
        self.item_base, self.item_level = self.item_tower.frozen_base(depth)
        tower, level = self.item_tower, self.item_level
        if self.item_base is None:
            top = tower
        else:
            top = _TowerTop(tower, level)
        # Under DDP a module's set of trainable parameters is fixed at wrapping: wrap it now.
        self.item_top = self._wrap(top)
        params = [p for piece in pieces for p in piece.parameters()]
        self.optimizer.add_param_group({"params": params, "lr": self.cfg.lr * self.cfg.lr_ratio})

    def _batches(self) -> list[torch.Tensor]:
        """This rank's batches of this epoch: shuffled, then grouped by sequence length within
        pools of 32 batches, so a batch is cropped to little padding; the batch order is shuffled.
        A fresh generator per epoch makes a resumed run draw the same batches."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.train_users), generator=g)
        # Every DDP rank must take the same number of steps, or the last all-reduce hangs.
        order = order[: len(order) - len(order) % self.world_size][self.rank::self.world_size].numpy()
        bs = self.cfg.batch_size
        batches = []
        for p in range(0, len(order), 32 * bs):
            pool = order[p:p + 32 * bs]
            pool = pool[np.argsort(self.train_lens[pool], kind="stable")]
            batches += [pool[s:s + bs] for s in range(0, len(pool), bs)]
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [torch.as_tensor(batches[k], device=self.device) for k in perm]

    def _train_epoch(self, tau: float, lam: float) -> dict:
        cfg = self.cfg
        self.user_tower.train()
        if self.item_top is not None:
            self.item_tower.train()
        users_all = torch.as_tensor(self.train_users, device=self.device)
        tot = {"loss": 0.0, "loss_random": 0.0, "ln_candidates": 0.0, "gate": 0.0}
        n_rows = 0
        for idx in self._batches():
            users = users_all[idx]
            width = int(self.train_lens[idx.cpu().numpy()].max())
            seqs = self.train_seqs[idx, -width:]  # crop the batch to its longest sequence
            inp, tgt = seqs[:, :-1], seqs[:, 1:]
            valid = (inp > 0) & (tgt > 0)
            u = self.user_module(users, inp, self.meta[users])[valid]
            cand, labels = candidates(tgt[valid])
            v = self._candidate_vectors(cand)
            loss, random_loss = inbatch_softmax(u, v, labels, self.log_q[cand], tau, lam)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = int(valid.sum())
            n_rows += n
            tot["loss"] += loss.item() * n
            tot["loss_random"] += random_loss.item() * n
            tot["ln_candidates"] += math.log(len(cand)) * n
            gate = self.user_tower.fusion.last_gate
            if gate is not None and self.cfg.fusion == "gated":
                tot["gate"] += gate[valid].mean().item() * n
        if self.world_size > 1:  # every rank must see the same epoch loss: it can trigger Stage 2
            import torch.distributed as dist

            sums = torch.tensor([*tot.values(), n_rows], dtype=torch.float64, device=self.device)
            dist.all_reduce(sums)
            tot = dict(zip(tot, sums[:-1].tolist()))
            n_rows = int(sums[-1].item())
        out = {k: v / max(n_rows, 1) for k, v in tot.items()}
        if self.cfg.fusion == "gated":
            out["gate_mean_train"] = out["gate"]
        if self.item_top is not None:
            with torch.no_grad():
                self.item_cache = self._all_item_vectors()
        return out

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def user_vectors(self, split: str, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One user vector per evaluated user (the history's last position); the fusion gate too."""
        self.user_tower.eval()
        ev, inp = self.eval_sets[split], self.eval_inputs[split]
        # Users in order of history length, each batch cropped to its longest history: most
        # histories are far shorter than max_len, and attention costs grow with its square.
        lens = np.minimum(np.diff(ev.hist_offsets), self.cfg.max_len)
        order = torch.as_tensor(np.argsort(lens, kind="stable"), device=self.device)
        users = torch.as_tensor(ev.users, device=self.device)
        vecs = torch.empty(len(ev), self.cfg.dim, device=self.device)
        gates = None
        for s in range(0, len(ev), batch):
            rows = order[s:s + batch]
            width = max(1, int(lens[rows.cpu().numpy()].max()))
            u = users[rows]
            vecs[rows] = self.user_tower(u, inp[rows, -width:], self.meta[u], last_only=True)[:, 0]
            g = self.user_tower.fusion.last_gate
            if g is not None:
                gates = gates if gates is not None else torch.empty(len(ev), g.shape[-1], device=self.device)
                gates[rows] = g[:, 0]
        return vecs, gates

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        ev = self.eval_sets[split]
        item_vecs = self.item_cache
        u, gate = self.user_vectors(split)
        ranks, top = [], []
        for s in range(0, len(ev), 1024):
            sl = slice(s, s + 1024)
            o = ev.hist_offsets[s:s + 1025]
            r, t = M.rank_targets(u[sl], item_vecs, ev.targets[sl], o - o[0], ev.hist_items[o[0]:o[-1]])
            ranks.append(r)
            top.append(t)
        out = M.summarize(np.concatenate(ranks), np.concatenate(top), ev.users, ev.targets,
                          self.bundle.cold_mask, self.tail, self.bundle.n_items)
        out["_effective_rank"] = M.effective_rank(item_vecs[1:])
        out["_uniformity"] = M.uniformity(item_vecs[1:])
        if gate is not None:
            cold = torch.as_tensor(self.bundle.cold_mask[ev.users], device=gate.device)
            if self.cfg.fusion == "gated":
                out["_gate_mean"] = float(gate.mean())
                out["_gate_mean_cold"] = float(gate[cold].mean()) if cold.any() else float("nan")
                out["_gate_mean_warm"] = float(gate[~cold].mean()) if (~cold).any() else float("nan")
            else:  # moe: the mean weight of each expert, over all users and apart for cold and warm
                for k in range(gate.shape[1]):
                    w = gate[:, k]
                    out[f"_expert_{k}"] = float(w.mean())
                    out[f"_expert_{k}_cold"] = float(w[cold].mean()) if cold.any() else float("nan")
                    out[f"_expert_{k}_warm"] = float(w[~cold].mean()) if (~cold).any() else float("nan")
        return out

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The trainable state only: frozen pretrained artifacts are referenced, not copied."""
        depth = self.cfg.unfreeze_depth if self.stage == 2 else 0
        item_state = {}
        for k, piece in enumerate(self.item_tower.stages()[:depth]):
            item_state[str(k)] = piece.state_dict()
        return {
            "format": 1, "config": self.cfg.to_dict(), "epoch": self.epoch, "stage": self.stage,
            "switch": self.switch, "history": self.history,
            "user_tower": self.user_tower.state_dict(), "item_tower_top": item_state,
            "optimizer": self.optimizer.state_dict(),
            # Shuffling has its own per-epoch generator; the global one only drives dropout.
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self._load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            from raytower.errors import ConfigError

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"checkpoint does not fit this model ({first[:200]})") from None

    def _load_state_dict(self, state: dict) -> None:
        self.user_tower.load_state_dict(state["user_tower"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        if state["stage"] == 2:
            self._enter_stage2(state["switch"]["reason"])
            self.switch = state["switch"]
            for k, piece in enumerate(self.item_tower.stages()[:len(state["item_tower_top"])]):
                piece.load_state_dict(state["item_tower_top"][str(k)])
            self.item_cache = self._all_item_vectors()
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])


class _TowerTop(nn.Module):
    """The unfrozen top of the item tower as a module of its own, so DDP can wrap just that."""

    def __init__(self, tower, level: int):
        super().__init__()
        self.tower, self.level = tower, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.forward_from(x, self.level)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
