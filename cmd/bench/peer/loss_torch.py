"""The PyTorch peer of `bench loss`: the poly-view objectives written the
straightforward way a user would, materialising the R x R similarity
matrix, with autograd for the backward pass.

Run by cmd/bench (one process per measurement, so peak memory is its own):
    python3 loss_torch.py --objective gpvc --n 1024 --m 4 --d 128 --tau 0.2
Prints one JSON object: seconds per forward+backward, the loss, the peak
memory above the inputs, or an error such as out of memory.
With --check it prints the losses of OBJECTIVES.md's reference input.
"""
import argparse
import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F


def pairs_and_negatives(s, n, m):
    """P[i, a, b] = s(ia, ib) and Lv[i, a, b] = LSE_{j != i} s(ia, jb)."""
    s4 = s.view(n, m, n, m)
    idx = torch.arange(n, device=s.device)
    p = s4[idx, :, idx, :]  # [n, m, m]
    same = torch.eye(n, dtype=torch.bool, device=s.device).view(n, 1, n, 1)
    neg = s4.masked_fill(same, float("-inf"))
    lv = torch.logsumexp(neg, dim=2)  # [n, m, m]: (i, a, b)
    return p, lv


def offdiag(m, device):
    return ~torch.eye(m, dtype=torch.bool, device=device)


def simclr_rows(x, n, tau):
    """NT-Xent over rows x [n, 2, d] (not renormalised)."""
    xf = x.reshape(2 * n, -1)
    s = xf @ xf.T / tau
    s = s.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=x.device), float("-inf"))
    target = torch.arange(2 * n, device=x.device) ^ 1
    return F.cross_entropy(s, target)


def poly_loss(h, objective, tau):
    n, m, d = h.shape
    z = F.normalize(h, dim=-1)
    if objective == "suffstats":
        total = 0
        for a in range(m):
            u = z[:, a]
            rest = (z.sum(1) - u) / (m - 1)
            total = total + simclr_rows(torch.stack([u, rest], 1), n, tau)
        return total / m
    if objective == "simclr":
        if m != 2:
            raise ValueError("simclr takes exactly 2 views")
        return simclr_rows(z, n, tau)
    zf = z.reshape(n * m, d)
    s = zf @ zf.T / tau
    p, lv = pairs_and_negatives(s, n, m)
    off = offdiag(m, h.device)
    if objective in ("gpvc", "apvc"):
        lam = torch.logsumexp(lv, dim=2, keepdim=True)  # all negatives
        l = torch.logaddexp(p, lam) - p
        if objective == "gpvc":
            return l[:, off].mean()
        l = l.masked_fill(~off, float("-inf"))
        return (torch.logsumexp(l, dim=2) - math.log(m - 1)).mean()
    if objective == "multicrop":
        own = torch.diagonal(lv, dim1=1, dim2=2).unsqueeze(2).expand(n, m, m)
        logz = torch.logsumexp(torch.stack([p, own, lv]), dim=0)
        return (logz - p)[:, off].mean()
    if objective == "mvinfonce":
        sd = s.masked_fill(torch.eye(n * m, dtype=torch.bool, device=h.device), float("-inf"))
        den = torch.logsumexp(sd.view(n, m * n * m), dim=1)
        num = torch.logsumexp(p.masked_fill(~off, float("-inf")).view(n, m * m), dim=1)
        return (den - num).mean()
    if objective == "mvdhel":
        upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=h.device), diagonal=1)
        own = torch.diagonal(lv, dim1=1, dim2=2)  # [n, m]
        num = torch.logsumexp(p.masked_fill(~upper, float("-inf")).view(n, m * m), dim=1)
        return (own.sum(1) - num).mean()
    raise ValueError("unknown objective " + objective)


def reference_input(n, m, d, dtype=torch.float64, device="cpu"):
    i = torch.arange(n, dtype=torch.float64).view(n, 1, 1)
    a = torch.arange(m, dtype=torch.float64).view(1, m, 1)
    t = torch.arange(d, dtype=torch.float64).view(1, 1, d)
    h = torch.sin(0.7 * (i + 1) + 1.3 * (a + 1) + 0.37 * (t + 1)) + 0.05 * t
    return h.to(dtype=dtype, device=device)


def peak_bytes(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objective", default="gpvc")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.check:
        out = {}
        for obj in ["simclr", "multicrop", "gpvc", "apvc", "suffstats", "mvinfonce", "mvdhel"]:
            shapes = [(4, 2)] if obj == "simclr" else [(4, 2), (3, 4)]
            out[obj] = [poly_loss(reference_input(n, m, 5), obj, 0.5).item() for n, m in shapes]
        print(json.dumps(out))
        return
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    dev = args.device
    h = reference_input(args.n, args.m, args.d, dtype=dtype, device=dev).requires_grad_(True)
    base = peak_bytes(dev)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, value = [], None
    try:
        for rep in range(args.reps + 1):  # the first run warms up
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda" and dtype == torch.bfloat16):
                loss = poly_loss(h, args.objective, args.tau)
            loss.backward()
            if dev == "cuda":
                torch.cuda.synchronize()
            if rep > 0:
                times.append(time.perf_counter() - t0)
            value = loss.item()
            h.grad = None
    except (RuntimeError, MemoryError) as e:  # torch raises OutOfMemoryError
        msg = "out of memory" if "out of memory" in str(e).lower() or isinstance(e, MemoryError) else str(e)
        print(json.dumps({"error": msg[:200]}))
        return
    times.sort()
    print(json.dumps({
        "seconds": times[len(times) // 2],
        "loss": value,
        "peak_bytes": max(0, peak_bytes(dev) - base),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    sys.exit(main())
