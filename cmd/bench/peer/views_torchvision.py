"""The torchvision peer of `bench views`: the same recipe with
torchvision.transforms.v2 on uint8 CHW tensors, M views per image, timed
on this machine. Prints one JSON object on stdout.

Run by cmd/bench (views.go); by hand:
    python views_torchvision.py --size 224 --src 375x500 --threads 1
"""
import argparse
import json
import time

import torch
from torchvision.transforms import v2

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CIFAR10 = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])


def recipe(name, size, antialias):
    """SimCLR's augmentation as polyview's SimCLRRecipe / SimCLRCIFARRecipe."""
    if name == "simclr":
        jitter, blur_p, (mean, std) = (0.8, 0.8, 0.8, 0.2), 0.5, IMAGENET
    elif name == "simclr-cifar":
        jitter, blur_p, (mean, std) = (0.4, 0.4, 0.4, 0.1), 0.0, CIFAR10
    else:
        raise SystemExit(f"unknown recipe {name}")
    kernel = max(3, int(0.1 * size) | 1)
    ops = [
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             antialias=antialias),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=0.8),
        v2.RandomGrayscale(0.2),
    ]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--src", default="375x500", help="source HxW")
    ap.add_argument("--recipe", default="simclr")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--antialias", type=int, default=1)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    h, w = (int(x) for x in a.src.split("x"))
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for _ in range(a.images)]
    t = recipe(a.recipe, a.size, bool(a.antialias))

    def batch():
        for im in images:
            for _ in range(a.views):
                t(im)

    batch()  # warm up
    views, start = 0, time.perf_counter()
    while True:
        batch()
        views += a.images * a.views
        elapsed = time.perf_counter() - start
        if elapsed >= a.seconds:
            break
    print(json.dumps({
        "views_per_s": views / elapsed, "threads": a.threads,
        "torch": torch.__version__, "antialias": bool(a.antialias),
    }))


if __name__ == "__main__":
    main()
