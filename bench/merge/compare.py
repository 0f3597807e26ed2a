#!/usr/bin/env python3
"""Counts elements that differ between two merged bf16 checkpoint dirs (same tensor names)."""
import os
import sys

import torch
from safetensors.torch import load_file



def load_dir(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


x, y = load_dir(sys.argv[1]), load_dir(sys.argv[2])
assert x.keys() == y.keys(), "different tensor names"
diff = sum(int((x[k].view(torch.int16) != y[k].view(torch.int16)).sum()) for k in x)
total = sum(v.numel() for v in x.values())
worst = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
print(f"{diff} of {total} elements differ (max abs difference {worst:g})")
