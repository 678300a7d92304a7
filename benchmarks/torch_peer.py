#!/usr/bin/env python3
"""PyTorch peer benchmark for ebomlc_jax: the same train steps in the authors' stack.

Times, on one machine and in one process:

* ``ce``: a plain cross-entropy step of CIFAR ResNet-32 on 100 noisy + 100 clean
  CIFAR-shaped images (one forward/backward over the 200 images, torch.optim.SGD with
  lr 0.1, momentum 0.9, weight decay 5e-4);
* ``ebomlc``: the EBOMLC step of the authors' released code (docs/reference_notes.md section 4,
  "released code"), written here from its description:
  noisy batch 100, clean batch 100 split in halves (first 50: upper loss
  F = CE(rho * logits + (1 - rho) * meta_probs, y); last 50: mixed into the lower loss G
  with weights 100:50), gradients of F w.r.t. main and meta, gradients of G at w, a kept
  one-step momentum-SGD lookahead w1 (with weight decay), gradients of G at w1,
  beta = xi * relu((delta ||dQ||^2 - <dQ_w, u_F>) / (||dQ||^2 + 1e-8)) with
  u_F = -eta (mu b + grad_w F + wd w), then the main SGD step and the meta Adam(amsgrad) step;
* ``ebomlc_create_graph`` (unless ``--no-create-graph-variant``): the same step with
  ``create_graph=True`` in every ``autograd.grad`` call, as the released code passes it
  (it never differentiates twice, so the flag only adds graph-building overhead).

Only the standard library, torch and numpy are imported, so the script runs on a machine
without internet. Usage::

    python benchmarks/torch_peer.py --device cpu --num-classes 10 --threads 2 \
        --warmup 3 --repeats 20 --out benchmarks/results/torch_peer_cpu.json
    python benchmarks/torch_peer.py --check      # correctness check only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import time

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # torch is optional for the project: it lives in its own venv
    sys.exit(
        "torch_peer.py needs PyTorch: python3 -m venv .venv-torch && "
        ".venv-torch/bin/pip install -r benchmarks/requirements-torch.txt"
    )

# --------------------------------------------------------------------------------------
# Constants of the protocol (docs/reference_notes.md sections 1-4).
# --------------------------------------------------------------------------------------
NOISY_BS = 100
CLEAN_BS = 100  # split in halves: first half upper loss F, second half into lower loss G
IMAGES_PER_STEP = NOISY_BS + CLEAN_BS
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
META_LR = 3e-4
META_EPS = 1e-8
RHO = 0.2
XI = 0.5
DELTA = 0.25

EXPECTED_MAIN_PARAMS = {10: 464_154, 100: 470_004}
EXPECTED_META_PARAMS = {10: 44_042, 100: 67_172}


# --------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """CIFAR BasicBlock with the option-A (parameter-free) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = stride != 1 or in_planes != planes
        # zero channels added on each side of the channel axis
        self.pad = (planes - in_planes) // 2

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.downsample:
            return x
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(nn.Module):
    """CIFAR ResNet-32: 3 stages x 5 BasicBlocks at 16/32/64 channels."""

    def __init__(self, num_classes: int, blocks_per_stage: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # fan_in, gain sqrt(2), untruncated normal
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor, return_h: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        h = out.mean(dim=(2, 3))  # global average pool -> 64-d feature
        logits = self.linear(h)
        if return_h:
            return logits, h
        return logits


class MetaNet(nn.Module):
    """Label-correction network g_alpha of the released code (always in train mode)."""

    def __init__(self, num_classes: int, hx_dim: int = 64, cls_dim: int = 128, h_dim: int = 128):
        super().__init__()
        self.cls_emb = nn.Embedding(num_classes, cls_dim)  # default init: N(0, 1)
        self.net = nn.Sequential(
            nn.Linear(hx_dim + cls_dim, h_dim),
            nn.Tanh(),
            nn.Dropout(0.3),
            nn.Linear(h_dim, h_dim),
            nn.Tanh(),
            nn.BatchNorm1d(h_dim),
            nn.Linear(h_dim, num_classes),
        )
        nn.init.normal_(self.cls_emb.weight, 0.0, 1.0)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, hx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hin = torch.cat([hx, self.cls_emb(y)], dim=-1)
        return F.softmax(self.net(hin), dim=-1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


# --------------------------------------------------------------------------------------
# Steps.
# --------------------------------------------------------------------------------------
def ce_step(main: nn.Module, opt: torch.optim.Optimizer, batch: dict) -> torch.Tensor:
    """Plain CE: one forward/backward over noisy + clean (200 images), one SGD step."""
    x = torch.cat([batch["x_noisy"], batch["x_clean"]], dim=0)
    y = torch.cat([batch["y_noisy"], batch["y_clean"]], dim=0)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(main(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def _sgd_delta(params, grads, bufs, eta: float) -> list[torch.Tensor]:
    """-eta * (mu * b + g + wd * p): the move torch.optim.SGD would make (buffer untouched).

    On the very first step there is no momentum buffer yet (b = 0), as in PyTorch.
    """
    d = torch._foreach_add(list(grads), list(params), alpha=WEIGHT_DECAY)
    if bufs is not None:
        torch._foreach_add_(d, bufs, alpha=MOMENTUM)
    torch._foreach_mul_(d, -eta)
    return d


def _flat_dot(a, b) -> torch.Tensor:
    return torch.dot(torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b]))


def _flat_sqnorm(a) -> torch.Tensor:
    v = torch.cat([t.reshape(-1) for t in a])
    return torch.dot(v, v)


def ebomlc_step(
    main: nn.Module,
    meta: nn.Module,
    main_opt: torch.optim.SGD,
    meta_opt: torch.optim.Adam,
    batch: dict,
    *,
    create_graph: bool = False,
    cifar100_dq_quirk: bool = False,
) -> dict:
    """One EBOMLC step as the released code computes it (see module docstring).

    Main-network passes are separate, as in the released code: F on the first clean half
    (50), G on the noisy batch (100) and on the second clean half (50), at w and again at w1.
    Each meta-network call draws its own dropout mask (three per step).
    """
    xs, ys = batch["x_noisy"], batch["y_noisy"]
    half = batch["x_clean"].shape[0] // 2
    xg, yg = batch["x_clean"][:half], batch["y_clean"][:half]  # upper loss F
    xc, yc = batch["x_clean"][half:], batch["y_clean"][half:]  # mixed into lower loss G
    bs_s, bs_c = ys.shape[0], yc.shape[0]

    w = [p for p in main.parameters()]
    a = [p for p in meta.parameters()]
    nw = len(w)
    eta = main_opt.param_groups[0]["lr"]

    def grads_of(loss):
        g = torch.autograd.grad(loss, w + a, create_graph=create_graph)
        if create_graph:  # the released code keeps these graphs; only values are used
            g = [t.detach() for t in g]
        return g[:nw], g[nw:]

    def lower_loss():
        logit_s, h_s = main(xs, return_h=True)
        soft = meta(h_s.detach(), ys)
        loss_s = soft_cross_entropy(logit_s, soft)
        loss_c = F.cross_entropy(main(xc), yc)
        return (loss_s * bs_s + loss_c * bs_c) / (bs_s + bs_c)

    # Upper loss F: the logits/probabilities mixture on the first clean half.
    logit_g, h_g = main(xg, return_h=True)
    probs_g = meta(h_g.detach(), yg)
    loss_f = F.cross_entropy(RHO * logit_g + (1.0 - RHO) * probs_g, yg)
    gF_w, gF_a = grads_of(loss_f)

    # Lower loss G at w.
    loss_g = lower_loss()
    gG0_w, gG0_a = grads_of(loss_g)

    with torch.no_grad():
        b = [main_opt.state[p].get("momentum_buffer") for p in w]
        bufs = None if any(t is None for t in b) else b
        u_f = _sgd_delta(w, gF_w, bufs, eta)  # negated optimiser delta, at w
        # Lookahead w1 = w - eta (mu b + grad G + wd w); it is kept (the released code
        # overwrites the parameters with it).
        torch._foreach_add_(w, _sgd_delta(w, gG0_w, bufs, eta))

    # Lower loss G at w1.
    loss_g1 = lower_loss()
    gG1_w, gG1_a = grads_of(loss_g1)

    with torch.no_grad():
        dq_w = torch._foreach_sub(list(gG0_w), list(gG1_w))
        dq_a = torch._foreach_sub(list(gG0_a), list(gG1_a))
        norm_dq = _flat_sqnorm(dq_w) + _flat_sqnorm(dq_a)
        dot = _flat_dot(dq_w, u_f)
        beta = XI * F.relu((DELTA * norm_dq - dot) / (norm_dq + 1e-8))
        if cifar100_dq_quirk:  # released code, dataset != 'cifar10': dQ_w -> SGD delta at w1
            dq_w = _sgd_delta(w, dq_w, bufs, eta)
        g_w = torch._foreach_mul(dq_w, beta)
        torch._foreach_add_(g_w, u_f)
        g_a = torch._foreach_mul(dq_a, beta)
        torch._foreach_add_(g_a, list(gF_a))
        for p, g in zip(w, g_w, strict=True):
            p.grad = g
        for p, g in zip(a, g_a, strict=True):
            p.grad = g
    main_opt.step()
    meta_opt.step()
    main_opt.zero_grad(set_to_none=True)
    meta_opt.zero_grad(set_to_none=True)
    return {"loss_f": loss_f.detach(), "loss_g": loss_g.detach(), "beta": beta}


def _ebomlc_step_naive(main, meta, main_opt, meta_opt, batch, cifar100_dq_quirk=False):
    """Plain per-parameter loops of the same step, for --check only (not timed)."""
    xs, ys = batch["x_noisy"], batch["y_noisy"]
    half = batch["x_clean"].shape[0] // 2
    xg, yg, xc, yc = (
        batch["x_clean"][:half],
        batch["y_clean"][:half],
        batch["x_clean"][half:],
        batch["y_clean"][half:],
    )
    w, a = list(main.parameters()), list(meta.parameters())
    eta = main_opt.param_groups[0]["lr"]

    def delta(params, grads):
        out = []
        for p, g in zip(params, grads, strict=True):
            buf = main_opt.state[p].get("momentum_buffer")
            m = torch.zeros_like(p) if buf is None else buf * MOMENTUM
            out.append(-eta * (m + g + WEIGHT_DECAY * p.detach()))
        return out

    def lower():
        logit_s, h_s = main(xs, return_h=True)
        ls = soft_cross_entropy(logit_s, meta(h_s.detach(), ys))
        lc = F.cross_entropy(main(xc), yc)
        return (ls * ys.shape[0] + lc * yc.shape[0]) / (ys.shape[0] + yc.shape[0])

    logit_g, h_g = main(xg, return_h=True)
    lf = F.cross_entropy(RHO * logit_g + (1 - RHO) * meta(h_g.detach(), yg), yg)
    u_f = delta(w, torch.autograd.grad(lf, w, retain_graph=True))
    gf_a = torch.autograd.grad(lf, a)
    lg = lower()
    g0_w = torch.autograd.grad(lg, w, retain_graph=True)
    g0_a = torch.autograd.grad(lg, a)
    w1 = [p.detach() + d for p, d in zip(w, delta(w, g0_w), strict=True)]
    for p, new in zip(w, w1, strict=True):
        p.data = new
    lg1 = lower()
    g1_w = torch.autograd.grad(lg1, w, retain_graph=True)
    g1_a = torch.autograd.grad(lg1, a)
    dq_w = [x - y for x, y in zip(g0_w, g1_w, strict=True)]
    dq_a = [x - y for x, y in zip(g0_a, g1_a, strict=True)]
    dq = torch.cat([t.reshape(-1) for t in dq_w + dq_a])
    nrm = dq.norm().pow(2)
    dot = torch.dot(
        torch.cat([t.reshape(-1) for t in dq_w]), torch.cat([t.reshape(-1) for t in u_f])
    )
    beta = XI * F.relu((DELTA * nrm - dot) / (nrm + 1e-8))
    if cifar100_dq_quirk:
        dq_w = delta(w, dq_w)
    for p, d, u in zip(w, dq_w, u_f, strict=True):
        p.grad = beta * d + u
    for p, d, g in zip(a, dq_a, gf_a, strict=True):
        p.grad = beta * d + g
    main_opt.step()
    meta_opt.step()
    main_opt.zero_grad(set_to_none=True)
    meta_opt.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------
# Setup helpers.
# --------------------------------------------------------------------------------------
def build(
    num_classes: int,
    device: torch.device,
    channels_last: bool,
    seed: int,
    dtype: torch.dtype = torch.float32,
):
    torch.manual_seed(seed)
    main = ResNet32(num_classes).to(device=device, dtype=dtype)
    meta = MetaNet(num_classes).to(device=device, dtype=dtype)
    n_main, n_meta = count_params(main), count_params(meta)
    if num_classes in EXPECTED_MAIN_PARAMS:
        assert n_main == EXPECTED_MAIN_PARAMS[num_classes], (n_main, num_classes)
        assert n_meta == EXPECTED_META_PARAMS[num_classes], (n_meta, num_classes)
    if channels_last:
        main = main.to(memory_format=torch.channels_last)
    main.train()
    meta.train()
    main_opt = torch.optim.SGD(
        main.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    meta_opt = torch.optim.Adam(
        meta.parameters(), lr=META_LR, eps=META_EPS, weight_decay=0.0, amsgrad=True
    )
    return main, meta, main_opt, meta_opt


def make_batch(num_classes: int, device: torch.device, channels_last: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        "x_noisy": rng.standard_normal((NOISY_BS, 3, 32, 32), dtype=np.float32),
        "y_noisy": rng.integers(0, num_classes, NOISY_BS),
        "x_clean": rng.standard_normal((CLEAN_BS, 3, 32, 32), dtype=np.float32),
        "y_clean": rng.integers(0, num_classes, CLEAN_BS),
    }
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(v).to(device)
        if k.startswith("x") and channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        out[k] = t
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(device: torch.device) -> dict:
    facts = {
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "os_cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "numpy_version": np.__version__,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "device": str(device),
        "device_name": cpu_model(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(
            device_name=torch.cuda.get_device_name(device),
            device_total_memory_gib=round(props.total_memory / 2**30, 2),
            cuda_version=torch.version.cuda,
            cudnn_version=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return facts


def summarize(times: list[float]) -> dict:
    t = np.asarray(times, dtype=np.float64)
    q25, med, q75 = np.percentile(t, [25, 50, 75])
    return {
        "median_s": float(med),
        "min_s": float(t.min()),
        "mean_s": float(t.mean()),
        "iqr_s": float(q75 - q25),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "images_per_s": float(IMAGES_PER_STEP / med),
        "n": int(t.size),
        "times_s": [float(x) for x in t],
    }


# --------------------------------------------------------------------------------------
# Correctness check.
# --------------------------------------------------------------------------------------
def run_check(args, device: torch.device) -> bool:
    quirk = args.num_classes != 10
    main, meta, main_opt, meta_opt = build(args.num_classes, device, args.channels_last, args.seed)
    batch = make_batch(args.num_classes, device, args.channels_last, args.seed + 1)
    w0 = [p.detach().clone() for p in main.parameters()]
    a0 = [p.detach().clone() for p in meta.parameters()]
    bn0 = main.bn1.running_mean.detach().clone()
    ok = True

    def report(name, cond, detail=""):
        nonlocal ok
        ok = ok and bool(cond)
        print(f"  [{'ok' if cond else 'FAIL'}] {name} {detail}")

    print("check: one EBOMLC step (two steps, so the momentum buffer is used too)")
    for i in range(2):
        torch.manual_seed(args.seed + 10 + i)
        out = ebomlc_step(main, meta, main_opt, meta_opt, batch, cifar100_dq_quirk=quirk)
        vals = {k: float(v) for k, v in out.items()}
        report(
            f"step {i}: finite loss_f, loss_g, beta",
            all(math.isfinite(v) for v in vals.values()) and vals["beta"] >= 0,
            " ".join(f"{k}={v:.4f}" for k, v in vals.items()),
        )

    def max_change(model, before):
        pairs = zip(model.parameters(), before, strict=True)
        return max(float((p.detach() - q).abs().max()) for p, q in pairs)

    dw, da = max_change(main, w0), max_change(meta, a0)
    report("main parameters changed", dw > 0, f"max|dw|={dw:.3e}")
    report("meta parameters changed", da > 0, f"max|da|={da:.3e}")
    report("main BN running stats changed", not torch.equal(bn0, main.bn1.running_mean))
    finite = all(
        bool(torch.isfinite(p).all()) for p in list(main.parameters()) + list(meta.parameters())
    )
    report("all parameters finite", finite)

    # The comparisons below run in float64: in float32 two summation orders (or two cuDNN
    # algorithms, TF32) drift apart by ~1e-4 after two lr-0.1 steps on random data.
    f64 = torch.float64
    batch64 = {k: (v.to(f64) if v.is_floating_point() else v) for k, v in batch.items()}

    # create_graph=True (as the released code passes it) gives the same update.
    results = []
    for cg in (False, True):
        m, g, mo, go = build(args.num_classes, device, args.channels_last, args.seed, f64)
        torch.manual_seed(args.seed + 99)
        ebomlc_step(m, g, mo, go, batch64, create_graph=cg, cifar100_dq_quirk=quirk)
        results.append([p.detach().clone() for p in list(m.parameters()) + list(g.parameters())])
    diff = max(float((p - q).abs().max()) for p, q in zip(*results, strict=True))
    report(
        "create_graph=True gives the same parameters (float64)",
        diff <= 1e-10,
        f"max diff={diff:.2e}",
    )

    # The timed (foreach) step equals plain per-parameter loops over two steps.
    results = []
    for step_fn in (ebomlc_step, _ebomlc_step_naive):
        m, g, mo, go = build(args.num_classes, device, args.channels_last, args.seed, f64)
        torch.manual_seed(args.seed + 7)
        for _ in range(2):
            step_fn(m, g, mo, go, batch64, cifar100_dq_quirk=quirk)
        results.append([p.detach().clone() for p in list(m.parameters()) + list(g.parameters())])
    diff = max(float((p - q).abs().max()) for p, q in zip(*results, strict=True))
    report(
        "timed step == per-parameter loop version (2 steps, float64)",
        diff <= 1e-10,
        f"max diff={diff:.2e}",
    )

    m, _, mo, _ = build(args.num_classes, device, args.channels_last, args.seed)
    loss = ce_step(m, mo, batch)
    report("CE step: finite loss", math.isfinite(float(loss)), f"loss={float(loss):.4f}")
    print("check:", "PASSED" if ok else "FAILED")
    return ok


# --------------------------------------------------------------------------------------
# Benchmark.
# --------------------------------------------------------------------------------------
def main_cli(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch intra-op threads (default: os.cpu_count())",
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument(
        "--no-create-graph-variant",
        action="store_true",
        help="skip timing the EBOMLC step with create_graph=True",
    )
    ap.add_argument(
        "--order",
        default="interleaved",
        choices=["interleaved", "blocked"],
        help="interleaved: one step of each kind per round (fairer ratios on a "
        "noisy machine); blocked: all repeats of one kind, then the next",
    )
    ap.add_argument(
        "--no-cudnn-benchmark",
        action="store_true",
        help="leave torch.backends.cudnn.benchmark off (the authors turn it on)",
    )
    ap.add_argument("--check", action="store_true", help="run the correctness check and exit")
    ap.add_argument("--out", default=None, help="write a JSON result here")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(
                "error: --device cuda but torch.cuda.is_available() is False "
                f"(torch {torch.__version__})",
                file=sys.stderr,
            )
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    else:
        device = torch.device("cpu")

    if args.check:
        return 0 if run_check(args, device) else 1

    quirk = args.num_classes != 10
    batch = make_batch(args.num_classes, device, args.channels_last, args.seed + 1)
    kinds = ["ce", "ebomlc"] + ([] if args.no_create_graph_variant else ["ebomlc_create_graph"])
    state = {k: build(args.num_classes, device, args.channels_last, args.seed) for k in kinds}
    n_main = count_params(state["ce"][0])
    n_meta = count_params(state["ce"][1])

    def one(kind: str):
        main, meta, main_opt, meta_opt = state[kind]
        if kind == "ce":
            return ce_step(main, main_opt, batch)
        return ebomlc_step(
            main,
            meta,
            main_opt,
            meta_opt,
            batch,
            create_graph=(kind == "ebomlc_create_graph"),
            cifar100_dq_quirk=quirk,
        )

    def timed(kind: str) -> float:
        sync(device)
        t0 = time.perf_counter()
        one(kind)
        sync(device)
        return time.perf_counter() - t0

    print(
        f"torch {torch.__version__} | device {device} | threads {torch.get_num_threads()} | "
        f"K={args.num_classes} | main {n_main:,} params | meta {n_meta:,} params"
    )
    for kind in kinds:
        for _ in range(args.warmup):
            timed(kind)
    times = {k: [] for k in kinds}
    peak_mem = {}
    if args.order == "interleaved":
        for _ in range(args.repeats):
            for kind in kinds:
                times[kind].append(timed(kind))
    else:
        for kind in kinds:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.repeats):
                times[kind].append(timed(kind))
            if device.type == "cuda":
                peak_mem[kind] = torch.cuda.max_memory_allocated(device) / 2**20

    results = {k: summarize(v) for k, v in times.items()}
    for k, v in peak_mem.items():
        results[k]["peak_memory_mib"] = round(v, 1)
    ratios = {f"{k}/ce": results[k]["median_s"] / results["ce"]["median_s"] for k in kinds[1:]}

    record = {
        "benchmark": "torch_peer",
        "description": "PyTorch peer of the ebomlc_jax train steps",
        "readme": "benchmarks/README_torch_peer.md",
        "config": {
            "num_classes": args.num_classes,
            "noisy_batch": NOISY_BS,
            "clean_batch": CLEAN_BS,
            "images_per_step": IMAGES_PER_STEP,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "order": args.order,
            "seed": args.seed,
            "channels_last": args.channels_last,
            "threads": torch.get_num_threads(),
            "cifar100_dq_quirk": quirk,
            "lr": LR,
            "momentum": MOMENTUM,
            "weight_decay": WEIGHT_DECAY,
            "meta_lr": META_LR,
            "rho": RHO,
            "xi": XI,
            "delta": DELTA,
        },
        "params": {"main": n_main, "meta": n_meta},
        "machine": machine_facts(device),
        "results": results,
        "ratios_median": ratios,
    }

    print(f"{'step':<22}{'median s':>10}{'min s':>10}{'IQR s':>10}{'img/s':>10}")
    for k in kinds:
        r = results[k]
        print(
            f"{k:<22}{r['median_s']:>10.4f}{r['min_s']:>10.4f}{r['iqr_s']:>10.4f}"
            f"{r['images_per_s']:>10.1f}"
        )
    for k, v in ratios.items():
        print(f"ratio {k} (median): {v:.3f}")
    print(f"date {record['machine']['date_utc']} | {record['machine']['device_name']}")

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
