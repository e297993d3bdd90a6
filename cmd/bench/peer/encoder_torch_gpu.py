"""PyTorch GPU peer of `bench encoder-gpu`: the encoders of
encoder_torch.py on one CUDA device, channels-last, under bf16 autocast
(the recipe PyTorch users run), forward + backward of the encoder from a
fixed output gradient in training mode, timed between CUDA
synchronisations. Reads one JSON object of arguments from argv[1], prints
one JSON object of results on stdout.

  {"warmup": 3, "iters": 10, "bf16": true,
   "models": [{"name": "resnet50", "stem": "imagenet", "size": 224,
               "channels": 3, "batch": 128, "width": 32}, ...]}
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_torch import convnet, resnet  # noqa: E402  the same architectures


def bench_model(spec, warmup, iters, bf16):
    if spec["name"] == "convnet":
        model = convnet(spec["channels"], spec["width"])
    else:
        model = resnet(spec["name"], spec["stem"], spec["channels"])
    model = model.cuda().train().to(memory_format=torch.channels_last)
    b, s = spec["batch"], spec["size"]
    x = torch.randn(b, spec["channels"], s, s, device="cuda").to(
        memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        g = torch.randn_like(model(x))
    times = []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y.backward(g)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    mean = sum(times) / len(times)
    return {"views_per_s": b / mean, "seconds": mean}


def main():
    args = json.loads(sys.argv[1])
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # PyTorch at its best: tuned algorithms
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "models": []}
    for spec in args["models"]:
        out["models"].append(bench_model(spec, args["warmup"], args["iters"], args["bf16"]))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
