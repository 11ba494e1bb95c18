"""
A compact GPT, in bf16 or with the INT8 data flow of Jetfire inside every transformer block.

Two styles:  GPT-2 (LayerNorm + GELU, mlp='gelu', norm='layernorm')
             Llama (RMSNorm + SwiGLU, mlp='swiglu', norm='rmsnorm'), the GLU model fallback is for
Three modes: bf16      plain PyTorch under autocast: the baseline every comparison uses
             int8      every block linear, norm and activation on int8 blocks (DESIGN §3)
             fallback  int8 + a second int8 plane for outlier activation blocks (fallback.py)

The int8 data flow lives inside three autograd Functions per block, as in Jetfire's released
code; between them (and around attention) tensors are float:

    x (fp32 residual) --NormLinear--> q, k, v (bf16) --SDPA--> y (bf16) --LinearResidual--> x
      x --NormMLPResidual--> x

Inside a Function the ops hand each other (int8, scale) QTensors and save int8 for backward:
    NormLinear       norm (int8 out) -> c_attn GEMM (float out, for attention); x passes
                     through to LinearResidual
    LinearResidual   quantize y -> c_proj GEMM (float out) + residual
    NormMLPResidual  norm -> c_fc GEMM (int8 out) -> GELU/SwiGLU (int8 in/out) -> c_proj GEMM
                     (float out) + residual
The residual adds take no kernel of their own: the c_proj GEMMs' epilogue adds x (gemm's
`residual`), and the norm backward kernels add the residual's gradient to dx (`dres`). For the
attention half, NormLinear returns x itself (a view) as a second output, so that autograd hands
its backward the gradient LinearResidual passes to x, instead of adding the two in a kernel.
Attention (QK^T, softmax, PV) stays in bf16 through scaled_dot_product_attention; embeddings,
the final norm, the LM head and the loss stay in bf16/fp32; the residual stream is fp32.
The same parameters serve every mode, so a bf16 checkpoint loads into an int8 model.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fallback import DEFAULT_RULE, DEFAULT_THRESHOLD, FallbackConfig
from int8_gelu import gelu_bwd, gelu_fwd, swiglu_bwd, swiglu_fwd
from int8_linear import linear_dgrad_t, linear_fwd, linear_wgrad_t
from int8_norm import layernorm_bwd, layernorm_fwd, rmsnorm_bwd, rmsnorm_fwd
from quantize import check_qblock, load_q, quantize, quantize_cat, save_q


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304       # GPT-2's 50257 padded to a multiple of 64; 256 for bytes
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp: str = "gelu"             # 'gelu' (4C hidden) | 'swiglu' (8C/3 hidden, rounded to 128)
    norm: str = "layernorm"       # 'layernorm' | 'rmsnorm'
    int8: bool = False
    fallback: bool = False        # needs int8
    qblock: int = 32
    fallback_rule: str = DEFAULT_RULE
    fallback_threshold: float = DEFAULT_THRESHOLD
    fallback_grad: bool = False   # also give output gradients a second plane

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.fallback and not self.int8:
            raise ValueError("fallback=True needs int8=True (it refines int8 blocks)")
        check_qblock(self.qblock)

    @property
    def hidden(self):
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return -(-8 * self.n_embd // 3 // 128) * 128  # a multiple of every block size


# ---------------------------------------------------------------------------------------------
# the int8 data flow: three autograd Functions per block

class Int8Spec:
    """Non-tensor settings one block's Functions need: block size, norm and MLP kind, the
    model's shared fallback state, and the layer's name for the flagged-fraction log."""

    def __init__(self, config, fb, name):
        self.qblock, self.norm, self.mlp, self.fb, self.name = (
            config.qblock, config.norm, config.mlp, fb, name)
        self.fuse_wgrad = False                  # GPT.fuse_weight_grads / Block's, see wgrad

    def wgrad(self, dy_qt, x_qt, w):
        """dW = dY^T X in fp32, the gradient of weight w, from dY^T and X^T (the wgrad GEMM's
        operands: written so beside dY and X where a kernel could, else transposed by the
        caller). With fuse_wgrad, where w.grad exists
        (fp32, contiguous: a later micro-step, zero_grad(set_to_none=False), a graphed step),
        the GEMM's epilogue adds dW into w.grad itself and this returns None, so autograd leaves
        w.grad alone: one read and one write of w.grad, where autograd's accumulation costs
        dW's write, two reads and a write (0.8 ms of a width-4096 block step on an H100). Off
        under DDP, whose hooks wait for autograd to accumulate every gradient."""
        g = w.grad
        if (self.fuse_wgrad and g is not None and g.dtype == torch.float32
                and g.is_contiguous()):
            linear_wgrad_t(dy_qt, x_qt, accumulate=g)
            return None
        return linear_wgrad_t(dy_qt, x_qt)

    def norm_fwd(self, x, w, b, what):
        """Norm with int8 output; `what` names the GEMM that output feeds (for the log)."""
        name = f"{self.name}.{what}"
        if self.norm == "layernorm":
            out = layernorm_fwd(x, w, b, self.qblock, fallback=self.fb.spec_for(name))
        else:
            out = rmsnorm_fwd(x, w, self.qblock, fallback=self.fb.spec_for(name))
        self.fb.record(name, out[0])
        return out

    def norm_bwd(self, dy_q, xhat_q, rstd, w, has_bias, dres):
        """dx (+ dres, the residual's gradient, added by the kernel), dw, db."""
        if self.norm == "layernorm":
            return layernorm_bwd(dy_q, xhat_q, rstd, w, has_bias, dres)
        return (*rmsnorm_bwd(dy_q, xhat_q, rstd, w, dres), None)

    def act_fwd(self, h_q):
        act = gelu_fwd if self.mlp == "gelu" else swiglu_fwd
        name = f"{self.name}.mlp.c_proj"
        g_q = act(h_q, fallback=self.fb.spec_for(name))
        self.fb.record(name, g_q)
        return g_q

    def act_bwd(self, dg_q, h_q):
        return (gelu_bwd if self.mlp == "gelu" else swiglu_bwd)(dg_q, h_q)

    def quantize_grad(self, dy, what):
        """Output gradients: stochastic rounding, as (dY, dY^T), the dgrad and the wgrad GEMM's
        operands, written by one kernel; a second plane only if fallback_grad. dy may be a tuple
        of column parts (attention's dq, dk, dv): read where they lie, not concatenated first."""
        if self.fb.grad:
            dy = torch.cat(dy, -1) if isinstance(dy, tuple) else dy
            return self.fb.quantize(dy, self.qblock, f"{self.name}.{what}.grad", stochastic=True,
                                    with_t=True)
        if isinstance(dy, tuple):
            return quantize_cat(dy, self.qblock, stochastic=True, with_t=True)
        return quantize(dy, self.qblock, stochastic=True, with_t=True)


def requantize_t(w, spec):
    """The int8 W^T again in backward, rather than saved from the forward: round to nearest is
    deterministic and w has not changed since, so it is the same bytes (transposed: what the
    dgrad GEMM reads, written so by the quantize kernel), and the block holds 1 byte per
    parameter less for backward (GPT-2 block, width 2048: 48 of 386 MiB) for one more pass over
    the fp32 weights."""
    return quantize(w, spec.qblock, transposed=True)


class NormLinear(torch.autograd.Function):
    """q, k, v = norm(x) @ W^T: x (B, T, C) fp32 -> q, k, v (B, T, C) in the attention dtype
    (views of one qkv, so that their gradients come back apart and are quantized as one dqkv
    with no concatenation: quantize_cat), and x again (a view of it) for LinearResidual's
    residual: its gradient then comes back here, to be added by the norm's backward kernel."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w, spec, out_dtype):
        a_q, xhat_q, rstd = spec.norm_fwd(x, ln_w, ln_b, "attn.c_attn")  # (B, T, C) int8
        w_q = quantize(w, spec.qblock)                                   # (3C, C) int8
        # --- GEMM: qkv = A @ W^T ---
        qkv = linear_fwd(a_q, w_q, out="float", out_dtype=out_dtype)     # (B, T, 3C)
        save_q(ctx, a_q, xhat_q, rstd, ln_w, w)        # w, not w_q: see requantize_t
        ctx.spec, ctx.has_bias = spec, ln_b is not None
        ctx.set_materialize_grads(False)               # (an unused x gives None, not zeros)
        return (*qkv.chunk(3, dim=-1), x)

    @staticmethod
    def backward(ctx, dq, dk, dv, dres):
        a_q, xhat_q, rstd, ln_w, w = load_q(ctx)
        spec = ctx.spec
        w_qt = requantize_t(w, spec)                                     # (C, 3C) int8: W^T
        like = next(g for g in (dq, dk, dv) if g is not None)
        parts = tuple(torch.zeros_like(like) if g is None else g for g in (dq, dk, dv))
        dqkv_q, dqkv_qt = spec.quantize_grad(parts, "attn.c_attn")       # (B, T, 3C) int8, ^T
        # --- GEMM: dA = dqkv @ W ---
        da_q = linear_dgrad_t(dqkv_q, w_qt, out="int8_sr")               # (B, T, C) int8
        # --- GEMM: dW = dqkv^T @ A ---
        dw = spec.wgrad(dqkv_qt, a_q.t(), w)                             # (3C, C) fp32
        del dqkv_q, dqkv_qt   # (each transient is dropped once used: the backward's peak)
        # dx + the gradient LinearResidual passed to x, in one kernel
        dx, dln_w, dln_b = spec.norm_bwd(da_q, xhat_q, rstd, ln_w, ctx.has_bias, dres)
        return dx, dln_w, dln_b, dw, None, None


class LinearResidual(torch.autograd.Function):
    """out = x + y @ W^T: y (B, T, C) bf16 attention output, x (B, T, C) fp32 residual."""

    @staticmethod
    def forward(ctx, y, w, x, spec):
        y_q, y_qt = spec.fb.quantize(y, spec.qblock, f"{spec.name}.attn.c_proj",
                                     with_t=True)                        # (B, T, C) int8, ^T
        w_q = quantize(w, spec.qblock)                                   # (C, C) int8
        # --- GEMM: out = x + Y @ W^T (x added by the epilogue) ---
        out = linear_fwd(y_q, w_q, residual=x)                           # (B, T, C) fp32
        save_q(ctx, y_qt, w)                           # Y^T: all the backward needs of Y
        ctx.spec, ctx.y_dtype = spec, y.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        y_qt, w = load_q(ctx)
        w_qt = requantize_t(w, ctx.spec)                                 # (C, C) int8: W^T
        dout_q, dout_qt = ctx.spec.quantize_grad(dout, "attn.c_proj")    # (B, T, C) int8, ^T
        # --- GEMM: dY = dout @ W (float: attention's backward takes floats) ---
        dy = linear_dgrad_t(dout_q, w_qt, out="float", out_dtype=ctx.y_dtype)  # (B, T, C)
        # --- GEMM: dW = dout^T @ Y ---
        dw = ctx.spec.wgrad(dout_qt, y_qt, w)                            # (C, C) fp32
        return dy, dw, dout, None                # dout: x's, added in NormLinear's backward


class NormMLPResidual(torch.autograd.Function):
    """out = x + act(norm(x) @ W_fc^T) @ W_proj^T, all inside on int8 blocks."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w_fc, w_proj, spec):
        a_q, xhat_q, rstd = spec.norm_fwd(x, ln_w, ln_b, "mlp.c_fc")      # (B, T, C) int8
        fc_q = quantize(w_fc, spec.qblock)                               # (H or 2H, C) int8
        proj_q = quantize(w_proj, spec.qblock)                           # (C, H) int8
        # --- GEMM: H = A @ W_fc^T (int8 out) ---
        h_q = linear_fwd(a_q, fc_q, out="int8")                          # (B, T, H or 2H)
        g_q = spec.act_fwd(h_q)                                          # (B, T, H) int8
        # --- GEMM: out = x + G @ W_proj^T (x added by the epilogue) ---
        out = linear_fwd(g_q, proj_q, residual=x)                        # (B, T, C) fp32
        save_q(ctx, a_q, xhat_q, h_q, g_q, rstd, ln_w, w_fc, w_proj)
        ctx.spec, ctx.has_bias = spec, ln_b is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        a_q, xhat_q, h_q, g_q, rstd, ln_w, w_fc, w_proj = load_q(ctx)
        spec = ctx.spec
        fc_qt, proj_qt = requantize_t(w_fc, spec), requantize_t(w_proj, spec)   # W^T, int8
        dout_q, dout_qt = spec.quantize_grad(dout, "mlp.c_proj")         # (B, T, C) int8, ^T
        # --- GEMM: dG = dout @ W_proj ---
        dg_q = linear_dgrad_t(dout_q, proj_qt, out="int8_sr")            # (B, T, H) int8
        # --- GEMM: dW_proj = dout^T @ G ---
        dw_proj = spec.wgrad(dout_qt, g_q.t(), w_proj)                   # (C, H) fp32
        del dout_q, dout_qt   # (each transient is dropped once used: the backward's peak)
        dh_q = spec.act_bwd(dg_q, h_q)                                   # (B, T, H or 2H)
        del dg_q
        # --- GEMM: dA = dH @ W_fc ---
        da_q = linear_dgrad_t(dh_q, fc_qt, out="int8_sr")                # (B, T, C) int8
        # --- GEMM: dW_fc = dH^T @ A ---
        dw_fc = spec.wgrad(dh_q.t(), a_q.t(), w_fc)                      # (H or 2H, C) fp32
        del dh_q
        # dx + dout (the residual's path), in one kernel
        dx, dln_w, dln_b = spec.norm_bwd(da_q, xhat_q, rstd, ln_w, ctx.has_bias, dout)
        return dx, dln_w, dln_b, dw_fc, dw_proj, None


# ---------------------------------------------------------------------------------------------
# the model

def make_norm(config):
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=1e-5)
    return nn.RMSNorm(config.n_embd, eps=1e-6)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def attend(self, q, k, v):
        """Causal SDPA on (B, T, C) q, k, v (views of one qkv) -> (B, T, C)."""
        B, T, C = q.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, T, C)

    def forward(self, x):
        return self.c_proj(self.attend(*self.c_attn(x).chunk(3, dim=-1)))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        n_fc = 2 * config.hidden if self.swiglu else config.hidden   # SwiGLU: [gate | up]
        self.c_fc = nn.Linear(config.n_embd, n_fc, bias=False)
        self.c_proj = nn.Linear(config.hidden, config.n_embd, bias=False)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            return self.c_proj(F.silu(gate) * up)
        return self.c_proj(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config, fb, index):
        super().__init__()
        self.int8 = config.int8
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.spec = Int8Spec(config, fb, f"h.{index}")

    def forward(self, x):
        if not self.int8:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        # the int8 ops pick their own precisions; attention runs in autocast's dtype (bf16 on
        # the GPU), or in fp32 when autocast is off (the CPU default)
        dtype = torch.get_autocast_dtype(x.device.type) \
            if torch.is_autocast_enabled(x.device.type) else torch.float32
        x = x.float()
        with torch.autocast(x.device.type, enabled=False):
            q, k, v, x = NormLinear.apply(x, self.ln_1.weight, getattr(self.ln_1, "bias", None),
                                          self.attn.c_attn.weight, self.spec, dtype)
            y = self.attn.attend(q, k, v)                                # (B, T, C)
            x = LinearResidual.apply(y, self.attn.c_proj.weight, x, self.spec)
            x = NormMLPResidual.apply(x, self.ln_2.weight, getattr(self.ln_2, "bias", None),
                                      self.mlp.c_fc.weight, self.mlp.c_proj.weight, self.spec)
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.fb = FallbackConfig(config.fallback, config.fallback_rule,
                                 config.fallback_threshold, config.fallback_grad)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config, self.fb, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight               # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():                         # GPT-2's scaled init
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        self.fb.stats.clear()                         # fallback_stats() describes this forward
        x = self.transformer.wte(idx).float() + self.transformer.wpe(pos).float()  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)                                         # (B, T, vocab)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1)
        return logits, loss

    def fuse_weight_grads(self, on=True):
        """Let the int8 blocks' weight-gradient GEMMs add into the weights' existing .grad
        (Int8Spec.wgrad) instead of handing autograd a gradient to add. Not under DDP."""
        for block in self.transformer.h:
            block.spec.fuse_wgrad = on

    def fallback_stats(self):
        """Flagged fraction of each fallback-quantized activation in the last forward (floats:
        one host sync, so call it where the step syncs anyway)."""
        return self.fb.fractions()

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]                      # matmuls, embeddings
        no_decay = [p for p in params if p.dim() < 2]                    # norm gains, biases
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :].float() / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
