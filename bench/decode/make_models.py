"""Writes two random Llama checkpoints (reference and aligned) of a SmolLM2 shape in Hugging Face
layout, as f32 and as bf16 (the same weights rounded), for bench/decode/run.sh.

    python make_models.py --shape 135m|1.7b --out DIR
    -> DIR/f32/{ref,aligned}, DIR/bf16/{ref,aligned},
       DIR/lora-r8, DIR/lora-r64 (random PEFT LoRA adapters for ref, q/k/v/o + MLP, f32,
       written in peft's save_pretrained layout without needing peft)

Skips a checkpoint that is already complete (config.json written last).
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, intermediate_size=1536, rope_theta=100000.0),
    # HuggingFaceTB/SmolLM2-1.7B
    "1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, intermediate_size=8192, rope_theta=130000.0),
}


def config(shape):
    return LlamaConfig(
        vocab_size=49152,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
        **SHAPES[shape],
    )


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_lora(model, rank, seed, out):
    """A random LoRA adapter (A and B with std 0.02, lora_alpha = 2 r) for every projection."""
    if os.path.exists(os.path.join(out, "adapter_config.json")):
        return
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in LORA_TARGETS:
            key = f"base_model.model.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.02
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": LORA_TARGETS,
           "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
           "lora_dropout": 0.0, "modules_to_save": None, "task_type": "CAUSAL_LM"}
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(f"wrote {out}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    for seed, name in [(1, "ref"), (2, "aligned")]:
        dirs = {dt: os.path.join(a.out, dt, name) for dt in ("f32", "bf16")}
        if all(os.path.exists(os.path.join(d, "config.json")) for d in dirs.values()):
            continue
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config(a.shape)).to(torch.float32).eval()
        model.save_pretrained(dirs["f32"], safe_serialization=True)
        model.to(torch.bfloat16).save_pretrained(dirs["bf16"], safe_serialization=True)
        del model
        print(f"wrote {dirs['f32']} and {dirs['bf16']}", flush=True)
    torch.manual_seed(1)
    ref = LlamaForCausalLM(config(a.shape))
    for rank in (8, 64):
        write_lora(ref, rank, 10 + rank, os.path.join(a.out, f"lora-r{rank}"))


if __name__ == "__main__":
    main()
