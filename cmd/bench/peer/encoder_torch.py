"""PyTorch peer of `bench encoder`: the same encoders, shapes and thread
count, timed the same way (forward + backward of the encoder from a fixed
output gradient, training mode, channels-last, the median iteration).
Reads one JSON object of arguments from argv[1] and prints one JSON
object of results on stdout.

  {"threads": 2, "warmup": 2, "iters": 9,
   "models": [{"name": "resnet18", "stem": "cifar", "size": 32, "channels": 3,
               "batch": 32, "width": 32}, ...],
   "gemm": [512, 1024]}
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torchvision


def convnet(channels, width):
    """The small ConvNet of trainer/model (convnet): four 3x3 convolutions
    with BN and ReLU, widths w, 2w, 4w, 8w, the last three with stride 2."""
    layers, c = [], channels
    for i, out in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [nn.Conv2d(c, out, 3, 1 if i == 0 else 2, 1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def resnet(name, stem, channels):
    """torchvision's ResNet without its classifier; the CIFAR stem swaps
    the 7x7 stride-2 convolution for a 3x3 and drops the max pool."""
    m = getattr(torchvision.models, name)()
    if stem == "cifar":
        m.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif channels != 3:
        m.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
    m.fc = nn.Identity()
    return m


def bench_model(spec, warmup, iters):
    if spec["name"] == "convnet":
        model = convnet(spec["channels"], spec["width"])
    else:
        model = resnet(spec["name"], spec["stem"], spec["channels"])
    model = model.train().to(memory_format=torch.channels_last)
    b, s = spec["batch"], spec["size"]
    x = torch.randn(b, spec["channels"], s, s).to(memory_format=torch.channels_last)
    with torch.no_grad():
        g = torch.randn_like(model(x))
    times = []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(x).backward(g)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]  # as the Go side picks it
    return {"views_per_s": b / median, "seconds": median}


def bench_gemm(n, rounds=5):
    """Best GFLOP/s over rounds of at least 0.2 s each, as the Go side."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b.t())
    best = 0.0
    for _ in range(rounds):
        t0, reps = time.perf_counter(), 0
        while reps == 0 or time.perf_counter() - t0 < 0.2:
            torch.mm(a, b.t())
            reps += 1
        best = max(best, 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def main():
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "models": [],
           "gemm": []}
    for spec in args["models"]:
        out["models"].append(bench_model(spec, args["warmup"], args["iters"]))
    for n in args["gemm"]:
        out["gemm"].append({"n": n, "gflops": bench_gemm(n)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
