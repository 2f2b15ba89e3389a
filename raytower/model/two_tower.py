"""The two towers, top to bottom in one file.

    ItemTower          item id + genres + year -> item_layers residual blocks -> projection head
    SequenceEncoder    causal Transformer over the recent items (SASRec-style, all positions at once)
    MetaEncoder        age bucket, gender, occupation -> one vector
    Fusion             concat+MLP | sigmoid gate between GNN and sequence vectors | mixture of experts
    HybridUserTower    GNN vector (table lookup, or causal mean of the history's GNN item vectors)
                       + SequenceEncoder + MetaEncoder -> Fusion

Both towers return L2-normalised vectors (``normalize``; off for ``score: dot``); a score is their
dot product (a cosine when normalised), divided by the temperature in the loss.
Index 0 is padding everywhere (items, users, feature buckets).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = mlp(dim, 2 * dim, dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(self.norm(x))


# ------------------------------------------------------------------------------------------------
# Item tower
# ------------------------------------------------------------------------------------------------


class ItemTower(nn.Module):
    """Item id embedding (initialised from LightGCN) plus content, through blocks and a head.

    ``unfreeze_depth`` counts from the top: 1 = head, 2 = head + top block, ...,
    item_layers + 1 = every block, item_layers + 2 = the embeddings too. Everything under the
    unfrozen part is computed once per stage (``frozen_base``), not per step.
    """

    def __init__(self, n_items: int, n_genres: int, n_year_buckets: int, dim: int, item_layers: int,
                 item_genres: torch.Tensor, item_year: torch.Tensor):
        super().__init__()
        self.id_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.genre_emb = nn.EmbeddingBag(n_genres + 1, dim, mode="mean", padding_idx=0)
        self.year_emb = nn.Embedding(n_year_buckets + 1, dim)
        self.blocks = nn.ModuleList(ResidualBlock(dim) for _ in range(item_layers))
        self.head = nn.Linear(dim, dim)
        self.normalize = True  # unit vectors out (score: cosine); pretraining always trains them so
        # Content features are data, not parameters: buffers move with .to(device) and are saved.
        self.register_buffer("item_genres", item_genres, persistent=False)
        self.register_buffer("item_year", item_year, persistent=False)

    def pieces(self) -> list[nn.Module]:
        """Trainable pieces from the top down, in the order unfreeze_depth counts them."""
        return [self.head, *reversed(self.blocks), nn.ModuleList([self.id_emb, self.genre_emb, self.year_emb])]

    def embed(self, items: torch.Tensor, id_dropout: float = 0.0) -> torch.Tensor:
        x_id = self.id_emb(items)
        if id_dropout > 0 and self.training:
            # Pretraining hides the id now and then so the content path has to carry weight.
            keep = (torch.rand(items.shape[0], 1, device=items.device) >= id_dropout).to(x_id.dtype)
            x_id = x_id * keep
        return x_id + self.genre_emb(self.item_genres[items]) + self.year_emb(self.item_year[items])

    def forward_from(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Run the tower from below block ``level`` (0 = the first block) to the output."""
        for block in self.blocks[level:]:
            x = block(x)
        x = self.head(x)
        return F.normalize(x, dim=-1) if self.normalize else x

    def forward(self, items: torch.Tensor, id_dropout: float = 0.0) -> torch.Tensor:
        return self.forward_from(self.embed(items, id_dropout), 0)

    def frozen_base(self, depth: int) -> tuple[torch.Tensor | None, int]:
        """Activations of every item at the boundary under the top ``depth`` pieces, and that
        boundary's block level (None when the embeddings themselves train). depth 0 or 1: below
        the head (all blocks frozen)."""
        n_blocks = len(self.blocks)
        level = n_blocks - max(0, min(depth - 1, n_blocks))
        if depth >= n_blocks + 2:
            return None, 0  # the embeddings themselves train: nothing to cache
        with torch.no_grad():
            all_items = torch.arange(self.id_emb.num_embeddings, device=self.id_emb.weight.device)
            x = self.embed(all_items)
            for block in self.blocks[:level]:
                x = block(x)
        return x, level


# ------------------------------------------------------------------------------------------------
# User tower
# ------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        # No dropout on the attention weights: on CPU it materialises a (B, heads, L, L) mask and
        # took a third of the epoch; dropout on the residual branches regularises enough.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.ff = mlp(dim, 4 * dim, dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.drop(self.ff(self.ln2(x)))


class SequenceEncoder(nn.Module):
    """Causal Transformer over left-padded item sequences; one output per position.

    Position t sees items 0..t, so one pass trains every next-item prediction of a sequence.
    ``pooling="attention"`` replaces h_t by an attention-weighted mean of h_0..h_t (a learned query),
    so repeated or important items count, not only the latest click.
    """

    def __init__(self, n_items: int, dim: int, max_len: int, n_blocks: int, n_heads: int, dropout: float, pooling: str):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, n_heads, dropout) for _ in range(n_blocks))
        self.ln = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.pooling = pooling
        self.pool_query = nn.Parameter(torch.zeros(dim)) if pooling == "attention" else None
        # seq_items: tied: while a step trains, (ids, vectors): the item tower's vectors of the items
        # the step needs (ids sorted, every id of the batch's sequences among them), read in place of
        # item_emb so the gradient reaches the item tower; None otherwise
        self.tied_inputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, L = seq.shape
        valid = seq > 0
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        # Keys may be real items in the past; a padded query still sees itself, so no row is
        # fully masked (an all-masked softmax row is NaN).
        allowed = causal & (valid[:, None, :] | eye)  # (B, L, L)
        if self.tied_inputs is None:
            items = self.item_emb(seq)
        else:
            ids, vectors = self.tied_inputs
            # an embedding lookup, not vectors[...]: its gradient sums in a fixed order (a resume is exact)
            items = F.embedding(torch.searchsorted(ids, seq.contiguous()), vectors)
        x = items * (self.item_emb.embedding_dim ** 0.5) + self.pos_emb.weight[-L:]
        x = self.drop(x) * valid[..., None]
        for block in self.blocks:
            x = block(x, allowed[:, None])
        h = self.ln(x)
        if self.pooling == "attention":
            scores = (h @ self.pool_query)[:, None, :].expand(B, L, L) / h.shape[-1] ** 0.5
            weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            h = weights @ h
        return h


class MetaEncoder(nn.Module):
    def __init__(self, cardinalities: dict[str, int], dim: int):
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(n, dim) for n in cardinalities.values())
        self.out = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # feats: (B, n_features) bucket ids
        return self.out(sum(emb(feats[:, k]) for k, emb in enumerate(self.embs)))


class Fusion(nn.Module):
    """Fuse per-position sequence vectors with per-user GNN and meta vectors.

    concat: MLP([v_gnn; v_seq; v_meta])
    gated:  g = sigmoid(W [v_gnn; v_seq; v_meta]); v = g * v_seq + (1 - g) * v_gnn + P v_meta; v + MLP(v)
    moe:    softmax gate over n_experts MLPs of [v_gnn; v_seq; v_meta] (MMoE-style, one task)
    ``last_gate`` keeps the gate of the latest call for logging (g, or the expert weights).
    """

    def __init__(self, kind: str, dim: int, n_experts: int, dropout: float):
        super().__init__()
        self.kind = kind
        if kind == "concat":
            self.mlp = mlp(3 * dim, 2 * dim, dim, dropout)
        elif kind == "gated":
            self.gate = nn.Linear(3 * dim, dim)
            self.meta_proj = nn.Linear(dim, dim)
            self.mlp = ResidualBlock(dim, dropout)
        elif kind == "moe":
            self.experts = nn.ModuleList(mlp(3 * dim, 2 * dim, dim, dropout) for _ in range(n_experts))
            self.gate = nn.Linear(3 * dim, n_experts)
        else:
            raise ValueError(f"unknown fusion {kind!r}")
        self.last_gate: torch.Tensor | None = None

    def forward(self, v_gnn: torch.Tensor, v_seq: torch.Tensor, v_meta: torch.Tensor) -> torch.Tensor:
        x = torch.cat([v_gnn, v_seq, v_meta], dim=-1)
        if self.kind == "concat":
            return self.mlp(x)
        if self.kind == "gated":
            g = torch.sigmoid(self.gate(x))
            self.last_gate = g.detach()
            return self.mlp(g * v_seq + (1 - g) * v_gnn + self.meta_proj(v_meta))
        w = self.gate(x).softmax(-1)
        self.last_gate = w.detach()
        return (torch.stack([e(x) for e in self.experts], dim=-2) * w[..., None]).sum(-2)


class HybridUserTower(nn.Module):
    """Long-term taste (LightGCN user vector, frozen unless ``gnn_unfreeze``), short-term intent
    (sequence), meta features."""

    all_positions = True  # one vector per position (``last_only=False``): targets "all" trains each

    def __init__(self, cfg, n_items: int, gnn_user: torch.Tensor, graph_users: torch.Tensor,
                 meta_cardinalities: dict[str, int], gnn_item: torch.Tensor | None = None):
        super().__init__()
        # gnn_vector "history": the long-term vector comes from the LightGCN item table, causally.
        self.gnn_window = cfg.gnn_window if cfg.gnn_vector == "history" else 0
        if self.gnn_window:
            self.register_buffer("gnn_item", F.normalize(gnn_item, dim=-1), persistent=False)
        # The frozen LightGCN table is data, not state: a non-persistent buffer, so a checkpoint's
        # size does not grow with the number of users (it comes from the pretraining artifacts).
        self.register_buffer("gnn_user", F.normalize(gnn_user, dim=-1), persistent=False)
        # Users outside the LightGCN graph (cold start) get one learned vector instead.
        self.register_buffer("graph_users", graph_users, persistent=False)
        self.cold_vec = nn.Parameter(torch.randn(gnn_user.shape[1]) * 0.02)
        self.gnn_dropout = cfg.gnn_dropout
        # A trainable table drifts off the unit sphere: its rows are normalised at lookup, in every
        # stage and at evaluation alike. A frozen table is normalised once, above, and used as is.
        self.normalize_gnn = cfg.gnn_unfreeze
        self.seq = SequenceEncoder(n_items, cfg.dim, cfg.max_len, cfg.n_blocks, cfg.n_heads, cfg.dropout, cfg.pooling)
        self.meta = MetaEncoder(meta_cardinalities, cfg.dim)
        self.fusion = Fusion(cfg.fusion, cfg.dim, cfg.n_experts, cfg.dropout)
        self.normalize = cfg.score == "cosine"

    def table_vectors(self, users: torch.Tensor) -> torch.Tensor:
        in_graph = self.graph_users[users]
        if self.training and self.gnn_dropout > 0:
            # The GNN vector was built from every train item, targets of early positions included;
            # hiding it at random keeps the fusion from leaning on that leak (and trains cold start).
            in_graph = in_graph & (torch.rand(users.shape, device=users.device) >= self.gnn_dropout)
        cold = F.normalize(self.cold_vec, dim=-1).expand(users.shape[0], -1)
        rows = self.gnn_user[users]
        if self.normalize_gnn:
            rows = F.normalize(rows, dim=-1)
        return torch.where(in_graph[:, None], rows, cold)

    def history_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, d): at each position the unit mean of the LightGCN item vectors of the last
        ``gnn_window`` items up to it. It sees no later item, so training never leaks a target into it
        (the user table does); padding contributes nothing, a position with no item gets zeros."""
        x = self.gnn_item[seq] * (seq > 0)[..., None]
        total = x.cumsum(1)
        before = F.pad(total, (0, 0, self.gnn_window, 0))[:, :-self.gnn_window]  # the sum up to t - window
        return F.normalize(total - before, dim=-1)

    @property
    def gnn_trainable(self) -> bool:
        return isinstance(self.gnn_user, nn.Parameter)

    def unfreeze_gnn(self) -> nn.Parameter:
        """Make the LightGCN table a parameter (``gnn_unfreeze``, at Stage 2) and return it.

        From here on it is state: ``state_dict`` carries it (key ``gnn_user``), so a checkpoint
        grows with the users, which only a trainable table justifies."""
        if not self.gnn_trainable:
            table = self.gnn_user
            delattr(self, "gnn_user")  # the buffer
            self.gnn_user = nn.Parameter(table.detach().clone())
        return self.gnn_user

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        # Checkpoints written before the GNN table became a buffer carry a copy of it: not state.
        state = {k: v for k, v in state.items() if k != "gnn_user.weight"}
        if "gnn_user" in state and not self.gnn_trainable:
            # A table trained in Stage 2, loaded to evaluate or export: it goes into the buffer
            # (nothing trains it here, and the model's state stays that of a frozen table).
            table = state.pop("gnn_user")
            if table.shape != self.gnn_user.shape:
                raise RuntimeError(f"size mismatch for gnn_user: checkpoint {tuple(table.shape)}, "
                                   f"model {tuple(self.gnn_user.shape)}")
            with torch.no_grad():
                self.gnn_user.copy_(table)
        return super().load_state_dict(state, strict=strict, assign=assign)

    def forward(self, users: torch.Tensor, seq: torch.Tensor, meta: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        h = self.seq(seq)  # (B, L, d)
        if last_only:
            h = h[:, -1:]
        if self.gnn_window:
            v_gnn = self.history_vectors(seq)[:, -h.shape[1]:]
            if self.training and self.gnn_dropout > 0:  # hidden at random as the table is: cold start trains
                hide = torch.rand(users.shape, device=users.device) < self.gnn_dropout
                v_gnn = torch.where(hide[:, None, None], F.normalize(self.cold_vec, dim=-1), v_gnn)
        else:
            v_gnn = self.table_vectors(users)[:, None].expand(-1, h.shape[1], -1)
        v_meta = self.meta(meta)[:, None].expand(-1, h.shape[1], -1)
        u = self.fusion(v_gnn, h, v_meta)
        return F.normalize(u, dim=-1) if self.normalize else u
