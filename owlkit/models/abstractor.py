"""The visual abstractor: a few learnable queries summarise the image tokens.

Per layer (both generations; see docs/architecture.md for shapes):

1. ``q = norm1(X)``, ``k_img = normk(I)`` where ``I`` is the vision output (every layer reads
   the same ``I``; only the queries change between layers);
2. attention of ``q`` over ``[q ; k_img]`` (self- and cross-attention in one softmax);
   mPLUG-Owl2 adds sin-cos positions to the query input and to the key input (1-D table for
   the queries, 2-D table with an all-zero CLS row for the image tokens), never to the values;
3. the residual starts from the *normalised* queries: ``h = q + out_proj(attn)``;
4. ``X' = h + w2(ffn_ln(SiLU(w1(norm2(h))) * w3(norm2(h))))``.

After the last layer ``visual_fc`` projects to the decoder width and the learned ``vit_eos``
row is appended, so each image becomes ``num_queries + 1`` decoder positions.

Sin-cos tables: a checkpoint that carries them (the official mPLUG-Owl2 release stores
``q_pos_embed`` / ``k_pos_embed`` in every layer's attention) keeps them as they are, as
buffers of :class:`AbstractorAttention`, used at the configured grid and written back on save.
Otherwise they are computed: in float64, rounded once to float32, so the table is the same
whatever numpy or libm does with float32 sin/cos (the official code computes in float32 numpy,
whose last bit changes between numpy versions). For another image size the 2-D table is
rebuilt for the actual grid.

:class:`LinearProjector` is the alternative both papers argue against (LLaVA's choice): every
patch token through one linear layer, so an image costs as many decoder positions as it has
patches (``abstractor_config.projector = "linear"``; docs/paper-claims.md compares the two).
:class:`WordProjector` is owlkit's own: the queries' outputs read as the LLM's words
(``projector = "words"``; docs/owl-small.md measures why owl-small uses it).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from owlkit.config import OwlAbstractorConfig
from owlkit.models.layers import LayerNorm, merge_heads, split_heads


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, dim]: sines of all frequencies, then cosines (float64 numpy).

    float64 throughout: rounded to float32 once by the caller, the result does not depend on
    the float32 ``pow``/``sin``/``cos`` of the numpy version at hand.
    """
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


@lru_cache(maxsize=32)
def _sincos_tables(dim: int, num_queries: int, grid_h: int, grid_w: int, cls: bool) -> tuple[np.ndarray, np.ndarray]:
    q_pos = sincos_1d(dim, np.arange(num_queries, dtype=np.float64)).astype(np.float32)
    cols, rows = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    # First half encodes the column, second half the row (row-major patch order).
    k_pos = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls:
        k_pos = np.concatenate([np.zeros((1, dim)), k_pos], axis=0)
    return q_pos, k_pos.astype(np.float32)


def sincos_tables(config: OwlAbstractorConfig, grid_h: int | None = None, grid_w: int | None = None):
    """(q_pos [Q, D], k_pos [cls + Gh*Gw, D]) as float32 tensors."""
    g = config.grid_size
    q_pos, k_pos = _sincos_tables(
        config.hidden_size, config.num_queries, grid_h or g, grid_w or g, bool(config.use_cls_token)
    )
    return torch.from_numpy(q_pos), torch.from_numpy(k_pos)


#: Buffers a checkpoint may carry in each abstractor attention (kept as they are when present).
CARRIED_TABLES = ("q_pos_embed", "k_pos_embed")


class AbstractorAttention(nn.Module):
    def __init__(self, config: OwlAbstractorConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(config.encoder_hidden_size, d)
        self.value = nn.Linear(config.encoder_hidden_size, d)
        # None unless a checkpoint carried them (then saved with the model; see module doc).
        for name in CARRIED_TABLES:
            self.register_buffer(name, None)

    def positions(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The carried tables where they fit this grid, else the computed ones."""
        if self.q_pos_embed is not None and self.q_pos_embed.shape == q_pos.shape:
            q_pos = self.q_pos_embed.to(q_pos.dtype)
        if self.k_pos_embed is not None and self.k_pos_embed.shape == k_pos.shape:
            k_pos = self.k_pos_embed.to(k_pos.dtype)
        return q_pos, k_pos

    def forward(self, q_in, k_in, v_in):
        q = split_heads(self.query(q_in), self.num_heads)
        k = split_heads(self.key(k_in), self.num_heads)
        v = split_heads(self.value(v_in), self.num_heads)
        p = self.dropout if self.training else 0.0
        return merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p))


class SwiGLU(nn.Module):
    """SiLU-gated MLP with a LayerNorm over the hidden units (``ffn_ln``) before ``w2``."""

    def __init__(self, config: OwlAbstractorConfig, fp32_ln: bool):
        super().__init__()
        d, h = config.hidden_size, config.intermediate_size
        self.w1 = nn.Linear(d, h)
        self.w3 = nn.Linear(d, h)
        self.ffn_ln = LayerNorm(h, config.layer_norm_eps, fp32_ln)
        self.w2 = nn.Linear(h, d)

    def forward(self, x):
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorLayer(nn.Module):
    def __init__(self, config: OwlAbstractorConfig, fp32_ln: bool = False):
        super().__init__()
        d, eps = config.hidden_size, config.attn_norm_eps
        self.norm1 = LayerNorm(d, eps, fp32_ln)
        self.normk = LayerNorm(config.encoder_hidden_size, eps, fp32_ln)
        self.attention = AbstractorAttention(config)
        self.out_proj = nn.Linear(d, d)
        self.norm2 = LayerNorm(d, eps, fp32_ln)
        self.mlp = SwiGLU(config, fp32_ln)

    def forward(self, x, image, q_pos=None, k_pos=None):
        q = self.norm1(x)
        kv = torch.cat([q, self.normk(image)], dim=1)
        if q_pos is None:
            attn = self.attention(q, kv, kv)
        else:
            q_pos, k_pos = self.attention.positions(q_pos, k_pos)
            attn = self.attention(q + q_pos, kv + torch.cat([q_pos, k_pos], dim=0), kv)
        h = q + self.out_proj(attn)
        return h + self.mlp(self.norm2(h))


class VisualAbstractor(nn.Module):
    def __init__(self, config: OwlAbstractorConfig, fp32_layernorm: bool = False):
        super().__init__()
        self.config = config
        self.query_embeds = nn.Parameter(torch.zeros(1, config.num_queries, config.hidden_size))
        self.layers = nn.ModuleList(AbstractorLayer(config, fp32_layernorm) for _ in range(config.num_hidden_layers))
        self.visual_fc = nn.Linear(config.hidden_size, config.text_hidden_size)
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, config.text_hidden_size))
        self.gradient_checkpointing = False

    def forward(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """[N, cls + Gh*Gw, Dv] -> [N, num_queries + 1, D_text]."""
        x = self.visual_fc(self.queries(image_tokens, grid_hw))
        return torch.cat([x, self.vit_eos.expand(x.shape[0], -1, -1)], dim=1)

    def queries(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """[N, cls + Gh*Gw, Dv] -> [N, num_queries, D]: the queries after the last layer."""
        x = self.query_embeds.expand(image_tokens.shape[0], -1, -1)
        q_pos = k_pos = None
        if self.config.pos_embed == "sincos":
            gh, gw = grid_hw or (self.config.grid_size, self.config.grid_size)
            q_pos, k_pos = (t.to(image_tokens.device, x.dtype) for t in sincos_tables(self.config, gh, gw))
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, image_tokens, q_pos, k_pos, use_reentrant=False)
            else:
                x = layer(x, image_tokens, q_pos, k_pos)
        return x


class LinearProjector(nn.Module):
    """Every patch token (the CLS row dropped) projected to the decoder width by one linear layer."""

    def __init__(self, config: OwlAbstractorConfig):
        super().__init__()
        self.config = config
        self.visual_fc = nn.Linear(config.encoder_hidden_size, config.text_hidden_size)
        self.gradient_checkpointing = False

    def forward(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """[N, cls + Gh*Gw, Dv] -> [N, Gh*Gw, D_text]."""
        patches = image_tokens[:, 1:] if self.config.use_cls_token else image_tokens
        return self.visual_fc(patches)


class WordProjector(VisualAbstractor):
    """The abstractor's queries read as words of the LLM (``projector = "words"``, owlkit's own).

    Each query's output (``visual_fc``, the LLM's width) is scored against the LLM's input
    embedding rows ``word_ids`` (scaled by the square root of the width) and the image token is
    the softmax-weighted mix of those rows: a picture becomes ``num_queries`` points inside the
    LLM's own vocabulary, continuous and differentiable, and no ``vit_eos``. Trained with the
    ``words`` objective (``owlkit.training.loss``: query i scored against the i-th token of the
    picture's caption), the tokens read to the LLM as the written caption, whose lookups
    ("What colour is the square?") a pre-trained LLM already makes (docs/owl-small.md).

    The rows are the LLM's (tied to its output in SmolLM2): the model passes them in
    (:meth:`~owlkit.models.owl.OwlForCausalLM.word_rows`), nothing is copied.
    """

    def __init__(self, config: OwlAbstractorConfig, fp32_layernorm: bool = False):
        super().__init__(config, fp32_layernorm)
        del self.vit_eos
        # token ids (None: the whole vocabulary); a list, not a buffer: the config holds them
        self.word_ids = None if config.word_ids is None else [int(w) for w in config.word_ids]

    def reset_parameters(self) -> None:
        """PyTorch's own initialisation of every layer, and zero queries (told apart by their
        sin-cos positions). What the ``words`` objective was measured with: from the
        transformers-style N(0, 0.02) init, owl-small's projector reached 85% held-out token
        accuracy after 1,000 steps against 90% from this one (docs/owl-small.md)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        nn.init.zeros_(self.query_embeds)

    def scores(self, image_tokens: torch.Tensor, rows: torch.Tensor, grid_hw: tuple[int, int] | None = None):
        """[N, cls + Gh*Gw, Dv], rows [W, D_text] -> [N, num_queries, W]: each query's logits over the words."""
        x = self.visual_fc(self.queries(image_tokens, grid_hw))
        return x @ rows.to(x.dtype).T / rows.shape[-1] ** 0.5

    def forward(self, image_tokens: torch.Tensor, grid_hw: tuple[int, int] | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """[N, cls + Gh*Gw, Dv] -> [N, num_queries, D_text]: each query's softmax over ``rows`` mixing them."""
        if rows is None:
            raise ValueError("word tokens are made of the LLM's embedding rows: pass rows (OwlForCausalLM.word_rows())")
        probs = torch.softmax(self.scores(image_tokens, rows, grid_hw).float(), dim=-1)
        return probs.to(rows.dtype) @ rows


def visual_projector(config: OwlAbstractorConfig, fp32_layernorm: bool = False) -> nn.Module:
    """The module ``config.projector`` names (the model's ``abstractor`` either way)."""
    if config.projector == "linear":
        return LinearProjector(config)
    if config.projector == "words":
        return WordProjector(config, fp32_layernorm)
    return VisualAbstractor(config, fp32_layernorm)
