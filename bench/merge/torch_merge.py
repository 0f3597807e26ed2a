#!/usr/bin/env python3
"""The recipe a Python user writes: load both state dicts, interpolate in float32, cast back.

Usage: torch_merge.py REF_DIR ALIGNED_DIR LAMBDA OUT_DIR
"""
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

ref_dir, aligned_dir, lam, out_dir = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
a = load_file(os.path.join(ref_dir, "model.safetensors"))
b = load_file(os.path.join(aligned_dir, "model.safetensors"))
merged = {}
for name, ta in a.items():
    merged[name] = ((1.0 - lam) * ta.float() + lam * b[name].float()).to(ta.dtype)
os.makedirs(out_dir, exist_ok=True)
save_file(merged, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
shutil.copy(os.path.join(ref_dir, "config.json"), out_dir)
