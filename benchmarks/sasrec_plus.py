"""SASRec+ beside raytower: the reference arm of issue 26, on raytower's own split and ranking.

    python benchmarks/sasrec_plus.py --data ../shared/data/ml-1m/ml-1m.txt --cold-frac 0 --threads 1
    python benchmarks/sasrec_plus.py --data ../shared/data/ml-1m/ml-1m.txt --cold-frac 0 --threads 1 --resume
    python benchmarks/sasrec_plus.py --data ../shared/data/ml-100k --threads 1

Written from the papers' descriptions (no code of their repositories, which carry no licence):

- SASRec (Kang & McAuley, ICDM 2018): learned item and position embeddings (the item embedding
  scaled by sqrt(d), as in Vaswani et al. 2017), padding positions held at zero; blocks of causal
  self-attention and a point-wise two-layer ReLU feed-forward net of width d, each sub-layer as
  x + Dropout(f(LayerNorm(x))); a final LayerNorm; the score of item i after position t is the dot
  product of the output with item i's (shared) input embedding.
- SASRec+ (Klenitskiy & Vasilev, RecSys 2023, "Turning dross into gold loss"): full cross-entropy
  over every item at every position, instead of binary cross-entropy with one negative; dim 64,
  2 blocks, 1 head, dropout 0.1, max length 200, batch 128, Adam 1e-3, early stop on validation
  NDCG@10 with patience 10.

Both arms see one protocol: the data is raytower's prepared bundle (``--data`` as ``raytower train``
takes it; ``--cold-frac 0`` on ML-1M evaluates every user), trained on its train split (each user's
last ``max_len + 1`` train items, every position a target); the model is ranked by raytower's own
``evaluate`` through its towers protocol (full ranking over all items, the input's items masked,
the test input including the validation item). Test is evaluated once, at the end, with the best
validation epoch's weights.

A run outlives its process. The checkpoint (``--run-dir``/checkpoint.pt: model, optimizer, epoch,
batch, best weights and figures, patience counter, RNG states; tensors and plain data, loaded with
weights_only=True) is written after every epoch, and on SIGTERM at the next batch, after which the
process exits 143 and prints the command that resumes it (``--resume``; the batches of an epoch
come from a generator seeded by (seed, epoch), so a resumed run trains exactly as an uninterrupted
one). Each epoch's figures (validation HR@10 = Recall@10, NDCG@10, ..., epoch wall and CPU seconds,
load average) are appended to ``RESULTS.jsonl`` as they come; ``RESULTS.json`` holds the final
figures with the commit, versions, command, date and load (``_stamp``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import ROOT, relative_command, stamp  # noqa: E402

from raytower.data import PrepareOptions, load_bundle  # noqa: E402
from raytower.errors import RaytowerError  # noqa: E402
from raytower.model.build import TwoTower  # noqa: E402
from raytower.train.data import TrainData, training_targets  # noqa: E402
from raytower.train.evaluate import evaluate, popularity  # noqa: E402

CHECKPOINT_FORMAT = 1
# Settings that define the run: a resume must not change them (max_epochs, threads and device may;
# the data is checked by its fingerprint, however its path is written).
FIXED = ("dim", "blocks", "heads", "dropout", "max_len", "batch_size", "lr", "patience", "seed")
PUBLISHED_ML1M = {"recall@10": 0.3152, "ndcg@10": 0.1821}  # Klenitskiy & Vasilev's SASRec+ on ml-1m.txt
THRESHOLD_ML1M = {"recall@10": 0.300, "ndcg@10": 0.172}  # issue 26: counts as reproduced at or above
TIMING = ("epoch_wall_s", "epoch_cpu_s", "train_cpu_s", "eval_cpu_s", "load_avg", "resumed", "time")


# --------------------------------------------------------------------------- the model


class SASRec(nn.Module):
    """Self-attentive sequential recommendation: (B, W) left-padded item ids -> (B, W, dim)."""

    def __init__(self, n_items: int, dim: int = 64, blocks: int = 2, heads: int = 1, dropout: float = 0.1,
                 max_len: int = 200):
        super().__init__()
        self.dim, self.heads, self.max_len = dim, heads, max_len
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        for emb in (self.items, self.positions):  # small, so the first logits are near uniform
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        width = seq.shape[1]
        real = seq > 0
        # Positions count back from the sequence's end, as in a batch padded to max_len: the last
        # item always has the last position, however wide this batch is.
        pos = torch.arange(self.max_len - width, self.max_len, device=seq.device)
        x = self.items(seq) * math.sqrt(self.dim) + self.positions(pos)
        keep = real[..., None].to(x.dtype)
        x = self.drop(x) * keep
        mask = attention_mask(real).repeat_interleave(self.heads, 0)
        for block in self.blocks:
            x = block(x, mask) * keep
        return self.norm(x)


class Block(nn.Module):
    """Causal self-attention, then a point-wise feed-forward net; each x + Dropout(f(LayerNorm(x)))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0])
        return x + self.drop(self.ffn(self.norm2(x)))


def attention_mask(real: torch.Tensor) -> torch.Tensor:
    """(B, W, W), True where position q may not attend to k: later positions and padding. Every
    position may attend to itself, so a padding row is never all masked (its output is zeroed)."""
    width = real.shape[1]
    eye = torch.eye(width, dtype=torch.bool, device=real.device)
    future = torch.ones(width, width, dtype=torch.bool, device=real.device).triu(1)
    return (future[None] | ~real[:, None, :]) & ~eye[None]


class LastPosition(nn.Module):
    """raytower's user-tower protocol, (users, seq, meta) -> (B, dim): the last position's output."""

    def __init__(self, net: SASRec):
        super().__init__()
        self.net = net

    def forward(self, users, seq, meta):
        return self.net(seq)[:, -1]


class SharedItems(nn.Module):
    """raytower's item-tower protocol, ids -> (N, dim): the input embedding itself (shared weights)."""

    def __init__(self, net: SASRec):
        super().__init__()
        self.net = net

    def forward(self, ids):
        return self.net.items(ids)


def full_cross_entropy(net: SASRec, seqs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """SASRec+'s loss: at every position with an input and a target, cross-entropy over every item
    (raw dot products, padding not a class). Returns (the sum over positions, their number)."""
    inp, tgt, valid = training_targets(seqs, "all")
    h = net(inp)[valid]
    logits = h @ net.items.weight[1:].T
    return F.cross_entropy(logits, tgt[valid] - 1, reduction="sum"), int(valid.sum())


def epoch_order(n_users: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch's batches of train-user positions: a fresh permutation from (seed, epoch), so a
    resumed run draws the batches an uninterrupted one would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.randperm(n_users, generator=g).split(batch_size))


# --------------------------------------------------------------------------- the run


class Stop:
    """SIGTERM sets it; the loop checkpoints at the next batch and exits 143."""

    requested = False

    @classmethod
    def install(cls):
        """Install the handler; returns the one it replaced."""
        cls.requested = False
        return signal.signal(signal.SIGTERM, lambda signum, frame: setattr(cls, "requested", True))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="a data source as `raytower train --data` takes it")
    p.add_argument("--cold-frac", type=float, default=0.1, help="as raytower's (0 on ML-1M: the published protocol)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=10, help="epochs without a better validation NDCG@10")
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", help="names the run directory and results (default: the data's name)")
    p.add_argument("--run-dir", type=Path, help="the checkpoint's directory (default runs/sasrec_plus/NAME)")
    p.add_argument("--results", type=Path,
                   help="RESULTS.jsonl and RESULTS.json (default benchmarks/results/sasrec_plus_NAME)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's checkpoint (with a higher --max-epochs, a run that "
                        "reached its max_epochs goes on)")
    p.add_argument("--force", action="store_true", help="start over, replacing this run's checkpoint and results")
    args = p.parse_args(argv)
    args.argv = [str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
    name = args.name or Path(args.data.split(":")[0].rstrip("/")).stem.replace(".", "_")
    args.run_dir = args.run_dir or ROOT / "runs" / "sasrec_plus" / name
    args.results = args.results or ROOT / "benchmarks" / "results" / f"sasrec_plus_{name}"
    return args


def config_of(args) -> dict:
    return {k: getattr(args, k) for k in ("data", "cold_frac", "data_seed", *FIXED, "max_epochs")}


def fresh_state(args, bundle) -> dict:
    return {"format": CHECKPOINT_FORMAT, "config": config_of(args), "fingerprint": bundle.fingerprint,
            "epoch": 0, "batch": 0, "partial": _no_partial(), "best": None, "patience": 0, "history": [],
            "stopped": None, "test": None, "started": stamp(args.argv)}


def _no_partial() -> dict:
    return {"loss_sum": 0.0, "positions": 0, "train_cpu_s": 0.0, "train_wall_s": 0.0, "resumed": False}


def save(path: Path, state: dict, net: SASRec, opt: torch.optim.Optimizer) -> None:
    """The checkpoint, written to a temporary file and renamed: a kill never leaves half of one."""
    state = dict(state, model=net.state_dict(), optimizer=opt.state_dict(), rng=_rng_state())
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    # The only randomness after the initialisation is torch's (dropout; batches use their own
    # seeded generator); numpy and random are not used.
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore(path: Path, args, bundle, net: SASRec, opt: torch.optim.Optimizer) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RaytowerError(f"{path}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
    changed = [k for k in FIXED if state["config"][k] != getattr(args, k)]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {state['config'][k]}" for k in changed)
        raise RaytowerError(f"{path}: --resume with other settings than the run's ({was}): drop them, or --force")
    if state["fingerprint"] != bundle.fingerprint:
        raise RaytowerError(f"{path}: the data's fingerprint is {bundle.fingerprint}, the run's {state['fingerprint']}")
    net.load_state_dict(state.pop("model"))
    opt.load_state_dict(state.pop("optimizer"))
    rng = state.pop("rng")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state["config"]["max_epochs"] = args.max_epochs
    state["partial"]["resumed"] = True
    if state["stopped"] == "max_epochs" and state["epoch"] < args.max_epochs:  # extended: go on
        state["stopped"], state["test"] = None, None
    return state


def write_json(path: Path, doc) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """The per-epoch log as the checkpoint knows it: a line appended after the last checkpoint, by a
    run killed before it could resume, must not appear twice."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train_batch(net, opt, data: TrainData, rows: torch.Tensor) -> tuple[float, int]:
    pos = rows.numpy()
    seqs = data.train_batch(pos, int(data.train_lens[pos].max()))
    loss_sum, n = full_cross_entropy(net, seqs)
    opt.zero_grad(set_to_none=True)
    (loss_sum / max(n, 1)).backward()
    opt.step()
    return float(loss_sum.detach()), n


def epoch_row(state: dict, val: dict, cpu: dict, wall_s: float) -> dict:
    part = state["partial"]
    row = {"epoch": state["epoch"] + 1, "train_loss": part["loss_sum"] / max(part["positions"], 1)}
    row |= {f"val/{k}": v for k, v in val.items()}
    row |= {"epoch_wall_s": wall_s, "epoch_cpu_s": cpu["train"] + cpu["eval"], "train_cpu_s": cpu["train"],
            "eval_cpu_s": cpu["eval"], "load_avg": [round(x, 2) for x in os.getloadavg()],
            "resumed": part["resumed"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return row


def run(args) -> int:
    torch.set_num_threads(args.threads)
    ckpt = args.run_dir / "checkpoint.pt"
    jsonl, final = args.results.with_suffix(".jsonl"), args.results.with_suffix(".json")
    if ckpt.exists() and not (args.resume or args.force):
        raise RaytowerError(f"{ckpt} exists: --resume to continue that run, --force to start over")
    if args.resume and not ckpt.exists():
        raise RaytowerError(f"{ckpt}: no checkpoint to resume")
    bundle = load_bundle(args.data, PrepareOptions(cold_frac=args.cold_frac, seed=args.data_seed))
    data = TrainData.build(bundle, args.max_len, args.device, val_users=0)  # every validation user
    torch.manual_seed(args.seed)
    net = SASRec(bundle.n_items, args.dim, args.blocks, args.heads, args.dropout, args.max_len).to(args.device)
    model = TwoTower(LastPosition(net), SharedItems(net), bundle.n_items)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if args.resume:
        state = restore(ckpt, args, bundle, net, opt)
        if state["test"] is not None:
            print(f"finished earlier: {final}")
            return 0
    else:
        state = fresh_state(args, bundle)
    write_jsonl(jsonl, state["history"])
    previous = Stop.install()
    try:
        return train(args, state, net, opt, model, data, bundle, ckpt, final, jsonl)
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(args, state, net, opt, model, data, bundle, ckpt: Path, final: Path, jsonl: Path) -> int:
    """Epochs until the patience runs out or max_epochs, then the test; 143 on SIGTERM."""
    resume_cmd = _resume_command(args.argv)
    while state["stopped"] is None:
        net.train()
        batches = epoch_order(len(data.train_users), args.batch_size, args.seed, state["epoch"])
        part = state["partial"]
        for b in range(state["batch"], len(batches)):
            c0, w0 = time.process_time(), time.perf_counter()
            loss, n = train_batch(net, opt, data, batches[b])
            part["loss_sum"] += loss
            part["positions"] += n
            part["train_cpu_s"] += time.process_time() - c0
            part["train_wall_s"] += time.perf_counter() - w0
            state["batch"] = b + 1
            if Stop.requested and state["batch"] < len(batches):
                save(ckpt, state, net, opt)
                print(f"stopped in epoch {state['epoch'] + 1} (batch {state['batch']} of {len(batches)}); "
                      f"resume it with: {resume_cmd}", file=sys.stderr)
                return 143
        c0, w0 = time.process_time(), time.perf_counter()
        val, _ = evaluate(model, data, "val")
        cpu = {"train": part["train_cpu_s"], "eval": time.process_time() - c0}
        row = epoch_row(state, val, cpu, part["train_wall_s"] + time.perf_counter() - w0)
        _advance(state, row, val, net, args)
        save(ckpt, state, net, opt)
        append_row(jsonl, row)
        print(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, val HR@10 {val['recall@10']:.4f}, "
              f"NDCG@10 {val['ndcg@10']:.4f}, {row['epoch_cpu_s']:.1f} CPU s", flush=True)
        if Stop.requested and state["stopped"] is None:
            print(f"stopped after epoch {row['epoch']}; resume it with: {resume_cmd}", file=sys.stderr)
            return 143
    return finish(state, net, opt, model, data, bundle, ckpt, final, jsonl, args.argv)


def _advance(state: dict, row: dict, val: dict, net: SASRec, args) -> None:
    """Count the epoch in: the best weights and figures, the patience counter, the stop."""
    state["epoch"] += 1
    state["batch"], state["partial"] = 0, _no_partial()
    best = state["best"]
    if best is None or val["ndcg@10"] > best["val"]["ndcg@10"]:
        state["best"] = {"epoch": state["epoch"], "val": val,
                         "model": {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}}
        state["patience"] = 0
    else:
        state["patience"] += 1
    row |= {"best_epoch": state["best"]["epoch"], "patience": state["patience"]}
    state["history"].append(row)
    if state["patience"] >= args.patience:
        state["stopped"] = "patience"
    elif state["epoch"] >= state["config"]["max_epochs"]:
        state["stopped"] = "max_epochs"


def finish(state, net, opt, model, data, bundle, ckpt: Path, final: Path, jsonl: Path, argv: list[str]) -> int:
    """Test, once, with the best validation epoch's weights; the final JSON."""
    net.load_state_dict(state["best"]["model"])
    c0 = time.process_time()
    test, _ = evaluate(model, data, "test")
    state["test"] = test
    save(ckpt, state, net, opt)
    hist = state["history"]
    doc = {
        "arm": "SASRec+ (benchmarks/sasrec_plus.py)",
        "config": state["config"],
        "data": {"name": bundle.name, "fingerprint": bundle.fingerprint, "n_users": bundle.n_users,
                 "n_items": bundle.n_items, "n_interactions": bundle.manifest["n_interactions"]},
        "best_epoch": state["best"]["epoch"], "epochs_run": state["epoch"], "stop": state["stopped"],
        "val": state["best"]["val"], "test": test, "popularity": popularity(bundle),
        "cpu_s": {"epochs": sum(r["epoch_cpu_s"] for r in hist), "test": time.process_time() - c0},
        "wall_s_epochs": sum(r["epoch_wall_s"] for r in hist),
        "jsonl": os.path.relpath(jsonl, ROOT),
        "started": state["started"], **stamp(argv),
    }
    if bundle.name == "ml-1m" and bundle.manifest["n_interactions"] == 999_611:
        doc["published"] = PUBLISHED_ML1M
        doc["reproduced"] = all(test[k] >= v for k, v in THRESHOLD_ML1M.items())
        doc["threshold"] = THRESHOLD_ML1M
    write_json(final, doc)
    print(f"best epoch {doc['best_epoch']} of {doc['epochs_run']} ({doc['stop']}): test HR@10 {test['recall@10']:.4f}, "
          f"NDCG@10 {test['ndcg@10']:.4f}, R@100 {test['recall@100']:.4f} -> {final}")
    return 0


def _resume_command(argv: list[str]) -> str:
    argv = [a for a in argv if a != "--force"]
    cmd = relative_command(argv)
    return cmd if "--resume" in argv else cmd + " --resume"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.force and args.resume:
        print("sasrec_plus: --force and --resume exclude each other", file=sys.stderr)
        return 2
    try:
        return run(args)
    except RaytowerError as e:
        print(f"sasrec_plus: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
