"""
Pretraining a small GPT for a fixed budget, in one file: model, optimizer, loop.
This is the file the research agent edits; the fixed parts (data, the hand-off of the
trained model) live in nanochat/harness.py, and val_bpb is computed from the handed-over
model by nanochat/evaluate.py, in another process. Cherry-picked from autoresearch/nanochat.
Usage: python train.py   (settings such as the time budget come from PAIRLAB_* variables)
"""

import gc
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

# OpenMP threads that finish an op spin until the next one; when the cores are shared (the
# agent drafts while this trains) a spinning thread waits out a descheduled peer at every
# op. Idle threads sleep instead: at load 13 on 2 cores a step fell from ~50 s to ~8 s.
# Read once, when torch loads its OpenMP runtime, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from nanochat import harness  # noqa: E402
from nanochat.harness import CPU, DEVICE, MAX_SEQ_LEN  # noqa: E402

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; `X if CPU else Y` gives per-device values)
# ---------------------------------------------------------------------------

# Model architecture
DEPTH = 4 if CPU else 8  # number of transformer layers
ASPECT_RATIO = 32 if CPU else 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM
HEAD_DIM = 64 if CPU else 128  # width of one attention head
WINDOW_PATTERN = "L" if CPU else "SSSL"  # per layer, cycled: L = full context, S = half

# Optimization
TOTAL_BATCH_SIZE = 4096 if CPU else 524288  # tokens per optimizer step
DEVICE_BATCH_SIZE = 16 if CPU else 128  # rows per forward/backward (memory bound)
EMBEDDING_LR = 0.6  # AdamW lr of the token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW lr of lm_head
MATRIX_LR = 0.04  # Muon lr of the transformer's matrices
SCALAR_LR = 0.5  # AdamW lr of the per-layer residual mixing scalars
WEIGHT_DECAY = 0.2  # cautious weight decay for Muon, decays linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)  # AdamW (beta1, beta2)
WARMUP_RATIO = 0.0  # fraction of the run spent ramping the lr up
WARMDOWN_RATIO = 0.5  # fraction of the run spent ramping the lr down at the end
FINAL_LR_FRAC = 0.0  # lr at the very end, as a fraction of the peak
SEED = 42  # initialization and data order

# bf16 on GPUs and on CPUs with native bf16 (AMX, AVX512-BF16); fp32 where bf16 would be
# emulated. PAIRLAB_PRECISION=bf16|fp32 forces one (the harness reads it).
compute_dtype = harness.COMPUTE_DTYPE
use_bf16 = compute_dtype == torch.bfloat16

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------

@dataclass
class GPTConfig:
    sequence_len: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    window_pattern: str


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer_idx, n_layer):
    # Every other layer, always including the last one.
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary_emb(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def load_flash_attention():
    """FA3 kernels through the `kernels` package on Hopper-class CUDA; None elsewhere."""
    if DEVICE != "cuda":
        return None
    try:
        from kernels import get_kernel
    except ImportError:
        return None
    # varunneal's build targets Hopper; kernels-community's covers the other archs.
    hopper = torch.cuda.get_device_capability() == (9, 0)
    repo = "varunneal/flash-attention-3" if hopper else "kernels-community/flash-attn3"
    try:
        return get_kernel(repo).flash_attn_interface
    except Exception as error:  # no network, unsupported GPU: SDPA still works
        print(f"FA3 unavailable ({error}); using scaled_dot_product_attention")
        return None


fa3 = load_flash_attention()


def attention(q, k, v, window):
    """Causal attention over (B, T, H, D) tensors: each position sees itself and the `window`
    tokens before it (FA3's window_size=(window, 0); the SDPA mask says the same)."""
    seq_len = q.size(1)
    if fa3 is not None:
        return fa3.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if window >= seq_len:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        pos = torch.arange(seq_len, device=q.device)
        distance = pos[:, None] - pos[None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=(distance >= 0) & (distance <= window))
    return y.transpose(1, 2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # A few input channels decide, per head, how much of the value embedding to mix in.
        self.ve_gate_channels = 32
        self.ve_gate = (nn.Linear(self.ve_gate_channels, self.n_head, bias=False)
                        if has_value_embedding(layer_idx, config.n_layer) else None)

    def forward(self, x, ve, cos_sin, window):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))  # in (0, 2)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))
        y = attention(q, k, v, window)
        return self.c_proj(y.contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²: sparse and cheap


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window):
        x = x + self.attn(norm(x), ve, cos_sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.window_sizes = self.compute_window_sizes(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Per layer: how much of the running residual and of the first layer's input to keep.
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, config.n_embd)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        cos, sin = self.precompute_rotary(config.sequence_len, config.n_embd // config.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform bound with std 1/sqrt(n_embd)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -s, s)
            # Output projections start at zero: each block begins as the identity.
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        if use_bf16:
            # Halves the memory traffic of the largest tables; the matmuls run in bf16 anyway.
            self.transformer.wte.to(dtype=torch.bfloat16)
            self.value_embeds.to(dtype=torch.bfloat16)

    @staticmethod
    def precompute_rotary(seq_len, head_dim, base=10000):
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    @staticmethod
    def compute_window_sizes(config):
        windows = {"L": config.sequence_len, "S": config.sequence_len // 2}
        pattern = config.window_pattern.upper()
        assert pattern and set(pattern) <= set(windows), f"bad WINDOW_PATTERN {pattern!r}"
        sizes = [windows[pattern[i % len(pattern)]] for i in range(config.n_layer)]
        sizes[-1] = config.sequence_len  # the last layer always sees the whole context
        return sizes

    def estimate_flops(self):
        """FLOPs per token for forward + backward: 6 per matmul weight, plus attention."""
        embedding_params = (self.transformer.wte.weight.numel()
                            + sum(ve.weight.numel() for ve in self.value_embeds.values())
                            + self.resid_lambdas.numel() + self.x0_lambdas.numel())
        matmul_params = sum(p.numel() for p in self.parameters()) - embedding_params
        head_dim = self.config.n_embd // self.config.n_head
        attention_flops = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len)
                              for w in self.window_sizes)
        return 6 * matmul_params + attention_flops

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.window_sizes[i])
        x = norm(x)
        logits = self.lm_head(x).float()
        logits = 15 * torch.tanh(logits / 15)  # softcap: bounded logits keep early training calm
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)

# ---------------------------------------------------------------------------
# Optimizer: Muon for the transformer's matrices, AdamW for everything else
# ---------------------------------------------------------------------------

def compile_if_enabled(fn):
    return torch.compile(fn, dynamic=False, fullgraph=True) if harness.COMPILE else fn


# Quintic iteration coefficients (Polar Express) that push singular values towards 1.
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


@compile_if_enabled
def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    # Hyperparameters arrive as 0-d tensors so a changing lr never recompiles the step.
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps
    param.add_(exp_avg / denom * (-lr / (1 - beta1**step)))


@compile_if_enabled
def muon_step(grads, params, momentum_buffer, second_momentum_buffer, momentum, lr,
              weight_decay, beta2, reduce_dim):
    # Nesterov momentum.
    momentum_buffer.lerp_(grads, 1 - momentum)
    g = grads.lerp_(momentum_buffer, momentum)
    # Orthogonalize: bf16, where it is fast, is precise enough for an iteration that only
    # needs the singular vectors.
    X = g.to(compute_dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = g.size(-2) > g.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        if tall:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    g = X.float()
    # NorMuon: normalize each row (or column) by a running second moment, then restore the
    # update's overall norm.
    v_mean = g.square().mean(dim=reduce_dim, keepdim=True)
    reduce_size = g.size(reduce_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * reduce_size).sqrt()
    second_momentum_buffer.lerp_(v_mean, 1 - beta2)
    step_size = second_momentum_buffer.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * reduce_size) * step_size.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (step_size * (v_norm / v_norm_new.clamp_min(1e-10)))
    # Cautious weight decay: only shrink weights the update is already pushing towards zero.
    decay_mask = (g * params) >= 0
    params.sub_(lr * g + lr * weight_decay * params * decay_mask)


class MuonAdamW(torch.optim.Optimizer):
    """Each group has kind 'adamw' or 'muon'. Muon groups hold matrices of one shape, stacked
    so that one orthogonalization call serves the whole group."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})

    @staticmethod
    def scalar(value):
        return torch.tensor(value, dtype=torch.float32)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self.adamw_group(group)
            else:
                self.muon_group(group)

    def adamw_group(self, group):
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                       self.scalar(state["step"]), self.scalar(group["lr"]), self.scalar(beta1),
                       self.scalar(beta2), self.scalar(group["eps"]),
                       self.scalar(group["weight_decay"]))

    def muon_group(self, group):
        params = group["params"]
        if params[0].grad is None:
            return
        state = self.state[params[0]]
        rows, cols = params[0].shape
        reduce_dim = -1 if rows >= cols else -2
        if not state:
            state["momentum_buffer"] = torch.zeros(len(params), rows, cols, device=params[0].device)
            second_shape = (len(params), rows, 1) if reduce_dim == -1 else (len(params), 1, cols)
            state["second_momentum_buffer"] = torch.zeros(second_shape, device=params[0].device)
        grads = torch.stack([p.grad.float() for p in params])
        stacked = torch.stack([p.float() for p in params])
        # Orthogonalized updates have unit spectral norm; taller matrices need a larger lr.
        lr = group["lr"] * max(1.0, rows / cols) ** 0.5
        muon_step(grads, stacked, state["momentum_buffer"], state["second_momentum_buffer"],
                  self.scalar(group["momentum"]), self.scalar(lr),
                  self.scalar(group["weight_decay"]), self.scalar(group["beta2"]), reduce_dim)
        for p, updated in zip(params, stacked.unbind(0)):
            p.copy_(updated)


def setup_optimizer(model):
    model_dim = model.config.n_embd
    # AdamW lrs were tuned at width 768 and scale as 1/sqrt(width).
    dmodel_lr_scale = (model_dim / 768) ** -0.5
    adamw = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    groups = [
        dict(adamw, params=list(model.lm_head.parameters()), lr=UNEMBEDDING_LR * dmodel_lr_scale),
        dict(adamw, params=list(model.transformer.wte.parameters()) + list(model.value_embeds.parameters()),
             lr=EMBEDDING_LR * dmodel_lr_scale),
        dict(adamw, params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(adamw, params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    matrices = list(model.transformer.h.parameters())
    for shape in sorted({p.shape for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape],
                           lr=MATRIX_LR, momentum=0.95, beta2=0.95, weight_decay=WEIGHT_DECAY))
    optimizer = MuonAdamW(groups)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer

# ---------------------------------------------------------------------------
# Schedules (progress runs from 0 to 1 over the time budget, or over the steps)
# ---------------------------------------------------------------------------

def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


def get_muon_momentum(step):
    frac = min(step / 300, 1)  # a lower momentum early lets the first steps move faster
    return (1 - frac) * 0.85 + frac * 0.95


def get_weight_decay(progress):
    return WEIGHT_DECAY * (1 - progress)

# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------

torch.manual_seed(SEED)
torch.set_float32_matmul_precision("high")
autocast_ctx = torch.amp.autocast(device_type=DEVICE, dtype=torch.bfloat16) if use_bf16 else nullcontext()

tokenizer = harness.load_tokenizer()
train_loader = harness.make_dataloader(DEVICE_BATCH_SIZE, seed=SEED)
x, y, epoch = next(train_loader)

model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=tokenizer.n_vocab, n_layer=DEPTH,
                   n_head=model_dim // HEAD_DIM, n_embd=model_dim, window_pattern=WINDOW_PATTERN)
with torch.device("meta"):
    model = GPT(config)  # built without memory, then materialized once on the device
model.to_empty(device=DEVICE)
model.cos, model.sin = (t.to(DEVICE) for t in GPT.precompute_rotary(MAX_SEQ_LEN, HEAD_DIM))
model.init_weights()
num_params = sum(p.numel() for p in model.parameters())
num_flops_per_token = model.estimate_flops()
optimizer = setup_optimizer(model)
if harness.COMPILE:
    model = torch.compile(model, dynamic=False)

tokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0, "TOTAL_BATCH_SIZE must be a multiple of a micro-batch"
grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_fwdbwd
peak_flops = harness.peak_flops(compute_dtype)

print(f"device: {DEVICE} | params: {num_params / 1e6:.2f}M | dim: {model_dim} | depth: {DEPTH} | "
      f"seq: {MAX_SEQ_LEN} | vocab: {config.vocab_size} | flops/token: {num_flops_per_token:.3e} | "
      f"precision: {'bf16' if use_bf16 else 'fp32'} | grad accum: {grad_accum_steps} | "
      + (f"steps: {harness.MAX_STEPS}" if harness.MAX_STEPS else f"budget: {harness.TIME_BUDGET:g}s"))

# ---------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------

WARMUP_STEPS_UNTIMED = 10  # the first steps compile kernels: not charged to the budget
synchronize = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
smooth_train_loss = 0.0
total_training_time = 0.0
step = 0
while True:
    progress = harness.progress(step, total_training_time)
    if progress >= 1.0:
        break
    synchronize()
    t0 = time.time()
    for _ in range(grad_accum_steps):
        with autocast_ctx:
            loss = model(x, y)
        train_loss = loss.detach()
        (loss / grad_accum_steps).backward()
        x, y, epoch = next(train_loader)

    lrm = get_lr_multiplier(progress)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = get_muon_momentum(step)
            group["weight_decay"] = get_weight_decay(progress)
    optimizer.step()
    model.zero_grad(set_to_none=True)

    train_loss_f = train_loss.item()
    harness.check_loss(train_loss_f, step)
    synchronize()
    dt = time.time() - t0
    if step >= WARMUP_STEPS_UNTIMED:
        total_training_time += dt

    ema_beta = 0.9
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
    debiased_loss = smooth_train_loss / (1 - ema_beta ** (step + 1))
    tokens_per_sec = TOTAL_BATCH_SIZE / dt
    mfu = 100 * num_flops_per_token * tokens_per_sec / peak_flops
    if harness.MAX_STEPS:
        remaining = dt * (harness.MAX_STEPS - step - 1)
    else:
        remaining = max(0.0, harness.TIME_BUDGET - total_training_time)
    print(f"\rstep {step:05d} ({100 * progress:.1f}%) | loss: {debiased_loss:.6f} | lrm: {lrm:.2f} | "
          f"dt: {dt * 1000:.0f}ms | tok/sec: {int(tokens_per_sec):,} | mfu: {mfu:.1f}% | "
          f"remaining: {remaining:.0f}s    ", end="", flush=True)

    # Python's cyclic GC rescans every live object on a full collection; after setup that is
    # hundreds of thousands of objects (modules, compiled graphs), a ~500ms stall at random
    # steps. Freeze them out of the collector once, and collect by hand now and then.
    if step == 0:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif (step + 1) % 5000 == 0:
        gc.collect()
    step += 1

print()
# ---- pairlab: protected begin (the harness evaluates the model; patches may not change this block) ----
fa3 = None  # the evaluator runs ATen operations only: the model is exported with SDPA
harness.handoff(model, autocast=autocast_ctx, batch_size=DEVICE_BATCH_SIZE, num_steps=step,
                total_tokens=step * TOTAL_BATCH_SIZE, training_seconds=total_training_time,
                flops_per_token=num_flops_per_token, depth=DEPTH)
# ---- pairlab: protected end ----
