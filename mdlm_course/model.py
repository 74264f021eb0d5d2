"""The denoiser: a pre-norm transformer that sees the whole sequence at once (no causal mask).

    h_0     = E[x_t]                                          token embedding, (B, L, d)
    h      += Attn(RMSNorm(h))                                for each of the n_layer blocks
    h      += SwiGLU(RMSNorm(h))
    logits  = W_out RMSNorm(h)                                (B, L, V)

    RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * g             (g: a learned weight, no bias)
    SwiGLU(x)    = W_2 (silu(W_1 x) * (W_3 x))               hidden size ~ 8/3 d, a multiple of 64
    Attn(x)      = softmax(q k^T / sqrt(d_head)) v  per head, with RoPE applied to q and k
    RoPE         rotates each pair (x_j, x_{j+d/2}) of q and k at position m by the angle m * theta_j,
                 theta_j = base^(-2j / d_head), so that q_m . k_n depends on m - n only.

The model knows nothing of diffusion: it maps token ids to raw logits over the full vocabulary
(the SUBS parameterisation that removes [MASK] lives in `diffusion.py`). With `causal=True` the
same backbone is an autoregressive transformer (the AR twin of chapter 8, ar.py).

Time conditioning (`time_conditioning=True`, off by default) is an ablation: a sinusoidal embedding
of t feeds adaLN modulation, norm(h) * (1 + scale(t)) + shift(t) and h + (1 + gate(t)) * branch.
The modulation layers start at zero, so at initialisation the model equals the unconditioned one.
MDLM does not need it: under absorbing diffusion the best denoiser p(x_0 | x_t) does not depend on t
(notebook 03). A time-conditioned model changes its output when t changes even if x_t does not, so a
sampler must ask it at the right time: the ancestral sampler calls it with the current (x_t, t) and
only skips steps that reveal nothing; the first-hitting sampler calls it at the time of the reveal it
draws (sampling.py; tests/test_sampling.py checks both against a t-dependent denoiser whose law is known).
Output shift (`output_shift=True`, off by default; DiffuLLaMA's): the logits for position i are read from
the hidden state at position i - 1 (position 0 keeps its own), so an MDLM warm-started from its AR twin keeps
the twin's alignment, where the state at i - 1 already predicts token i (chapter 8, bench/levers.py).
Symbols: B samples, L positions (seq_len), V vocabulary size, d = d_model, H heads of d_head.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PRESETS, ModelConfig, debug_checks  # noqa: F401  (re-exported: model.ModelConfig)
from .errors import MdlmError


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, over the last dimension. No mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # at least float32, even under autocast: mean(x^2) of a bf16 tensor loses digits
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)     # (..., dim)
        return (normed * self.weight.to(xf.dtype)).to(x.dtype)


class SwiGLU(nn.Module):
    """W_2 (silu(W_1 x) * (W_3 x)): a gated MLP, d -> d_hidden -> d."""

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_hidden, bias=False)   # gate
        self.w3 = nn.Linear(d_model, d_hidden, bias=False)   # value
        self.w2 = nn.Linear(d_hidden, d_model, bias=False)   # back to the residual stream
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_tables(seq_len: int, d_head: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles m * theta_j, each (seq_len, d_head // 2), theta_j = base^(-2j/d_head)."""
    theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)   # (d_head/2,)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * theta[None]    # (L, d_head/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_j, x_{j + d/2}) of x (B, H, L, d) by the angles of positions 0..L-1.

    [x1, x2] -> [x1 cos - x2 sin, x1 sin + x2 cos]: a rotation, so |x| is unchanged and the dot
    product of a query at m with a key at n depends only on m - n.
    """
    L, half = x.shape[-2], x.shape[-1] // 2
    cos, sin = cos[:L].to(x.dtype), sin[:L].to(x.dtype)            # (L, d/2)
    x1, x2 = x[..., :half], x[..., half:]                          # (B, H, L, d/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE, through F.scaled_dot_product_attention."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.d_head, self.causal = config.n_head, config.d_head, config.causal
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def rotated_qkv(self, x, cos, sin):
        """(q, k, v) of x (B, L, d), each (B, H, L, dh), with RoPE applied to q and k."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, dh)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.rotated_qkv(x, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )                                                           # (B, H, L, dh)
        y = y.transpose(1, 2).reshape(B, L, d)                      # (B, L, d)
        return self.resid_dropout(self.proj(y))

    def attention_probs(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The attention weights softmax(q k^T / sqrt(dh)) (B, H, L, L), written out (for pictures).

        forward() never builds this matrix; tests check that attention_probs @ v gives the same output.
        """
        q, k, _ = self.rotated_qkv(x, cos, sin)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, L, L)
        if self.causal:
            L = x.shape[1]
            future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return scores.softmax(-1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (B,) -> (B, dim): [cos(1000 t w_j), sin(1000 t w_j)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]               # (B, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Block(nn.Module):
    """Pre-norm block: h + Attn(norm(h)), then h + MLP(norm(h)); adaLN-modulated if conditioned."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_hidden, config.dropout)
        # adaLN: (shift, scale, gate) for the attention and the MLP branch, zero at initialisation
        self.modulation = nn.Linear(config.cond_dim, 6 * config.d_model) if config.time_conditioning else None

    def forward(self, h, cos, sin, cond=None):
        if self.modulation is None:
            h = h + self.attn(self.norm1(h), cos, sin)
            return h + self.mlp(self.norm2(h))
        mods = self.modulation(cond)[:, None, :].chunk(6, dim=-1)  # 6 x (B, 1, d)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = h + (1 + gate1) * self.attn(self.norm1(h) * (1 + scale1) + shift1, cos, sin)
        return h + (1 + gate2) * self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class MDLM(nn.Module):
    """The transformer denoiser.  MDLM(ModelConfig.preset("tiny"))(xt, t) -> logits (B, L, V)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.time_conditioning:
            self.time_mlp = nn.Sequential(
                nn.Linear(config.cond_dim, config.cond_dim), nn.SiLU(), nn.Linear(config.cond_dim, config.cond_dim),
                nn.SiLU(),
            )
            self.final_modulation = nn.Linear(config.cond_dim, 2 * config.d_model)   # shift, scale
        cos, sin = rope_tables(config.seq_len, config.d_head, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)    # (L, d_head/2), rebuilt, never saved
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for block in self.blocks:   # residual projections: std 0.02 / sqrt(2 n_layer), GPT-2 style,
            for w in (block.attn.proj.weight, block.mlp.w2.weight):  # so the stream's variance stays put
                nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            if block.modulation is not None:
                nn.init.zeros_(block.modulation.weight)
                nn.init.zeros_(block.modulation.bias)
        if config.time_conditioning:
            nn.init.zeros_(self.final_modulation.weight)
            nn.init.zeros_(self.final_modulation.bias)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        # forward() checks that every id is in [0, vocab_size) when this is True. Off by default: the check
        # reads xt's min and max back from the GPU, a sync per call. MDLM_COURSE_DEBUG=1 turns it on.
        self.check_inputs = debug_checks()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def time_conditioned(self) -> bool:
        """True if the output depends on t as well as x_t. For information: the samplers need not read it,
        since they never reuse logits across times (sampling.py)."""
        return self.config.time_conditioning

    def forward(self, xt: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids xt (B, L), L <= seq_len, and times t (B,) -> raw logits (B, L, V).

        t is ignored unless config.time_conditioning, which requires it. Integer ids of any dtype are accepted
        (uint8, int16: cast to int64). With model.check_inputs (MDLM_COURSE_DEBUG=1), ids outside
        [0, vocab_size) give a ValueError instead of an index error deep inside torch.
        """
        if xt.dim() != 2 or xt.is_floating_point() or xt.is_complex() or xt.dtype == torch.bool:
            raise MdlmError(f"xt must be integer token ids of shape (B, L), got {tuple(xt.shape)} {xt.dtype}")
        if xt.dtype not in (torch.int32, torch.int64):
            xt = xt.long()                                          # the embedding takes int32 or int64
        B, L = xt.shape
        V = self.config.vocab_size
        if self.check_inputs and xt.numel() and not (0 <= int(xt.min()) and int(xt.max()) < V):
            raise MdlmError(f"xt holds token ids outside [0, {V}) (min {int(xt.min())}, max {int(xt.max())}); "
                             "encode the text with the model's tokenizer")
        if L > self.config.seq_len:
            raise MdlmError(
                f"sequence length {L} exceeds config.seq_len={self.config.seq_len} (the RoPE tables' size); "
                "use shorter windows or build the model with a larger seq_len"
            )
        h = self.drop(self.tok_emb(xt))                             # (B, L, d)
        cond = None
        if self.config.time_conditioning:
            if t is None:
                raise MdlmError("this model has time_conditioning=True, so forward(xt, t) needs t (B,)")
            t = torch.as_tensor(t, device=xt.device, dtype=torch.float32)
            if t.shape not in ((), (1,), (B,)):
                raise MdlmError(f"t must be a float or have shape (B,) = ({B},), got {tuple(t.shape)}")
            if bool(t.isnan().any()):                               # NaN t would give NaN logits, silently
                raise MdlmError("t holds NaN; times must be numbers in [0, 1]")
            t = t.expand(B)                                         # (B,)
            cond = self.time_mlp(timestep_embedding(t, self.config.cond_dim))        # (B, cond_dim)
        for block in self.blocks:
            h = block(h, self.rope_cos, self.rope_sin, cond)       # (B, L, d)
        h = self.norm_f(h)
        if cond is not None:
            shift, scale = self.final_modulation(cond)[:, None, :].chunk(2, dim=-1)   # (B, 1, d) each
            h = h * (1 + scale) + shift
        logits = self.head(h)                                       # (B, L, V)
        if self.config.output_shift:                                # DiffuLLaMA: position i reads row i - 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)   # (B, L, V)
        return logits

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied head counts once). non_embedding: leave out embedding and head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.head.weight.numel()
        return n

    def param_counts(self) -> dict[str, int]:
        """Parameters by component: embedding, attention, mlp, norms, time_conditioning, head."""
        counts = {"embedding": self.tok_emb.weight.numel(), "attention": 0, "mlp": 0, "norms": 0,
                  "time_conditioning": 0,
                  "head": 0 if self.config.tie_embeddings else self.head.weight.numel()}
        for name, p in self.named_parameters():
            if ".attn." in name:
                counts["attention"] += p.numel()
            elif ".mlp." in name:
                counts["mlp"] += p.numel()
            elif "norm" in name:
                counts["norms"] += p.numel()
            elif "modulation" in name or name.startswith("time_mlp"):
                counts["time_conditioning"] += p.numel()
        assert sum(counts.values()) == self.num_params(), counts
        return counts


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def flops_per_token(model: nn.Module, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 N + 12 n_layer L d_model.

    A matrix multiply with N weights costs 2N FLOPs per token forward and 4N backward (gradients for the
    input and for the weights): 6N. Attention's q k^T and (softmax) v each cost 2 L d per token and layer
    forward, three times that with the backward: 12 L d. Embedding look-ups, norms and softmax are ignored.
    N counts the per-token nn.Linear weights (attention, MLP, the output head) but not the embedding.
    """
    raw = unwrap(model)
    cfg = raw.config
    seq_len = seq_len or cfg.seq_len
    n = sum(m.weight.numel() for name, m in raw.named_modules()
            if isinstance(m, nn.Linear) and "modulation" not in name and not name.startswith("time_mlp"))
    return 6.0 * n + 12.0 * cfg.n_layer * seq_len * cfg.d_model
