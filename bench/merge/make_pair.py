#!/usr/bin/env python3
"""Writes two random SmolLM2-360M-shaped bf16 checkpoints (tied embeddings, ~724 MB each).

Usage: make_pair.py [OUT_DIR]   (default /tmp/dera-merge-bench) -> OUT_DIR/{a,b}
Needs only numpy and safetensors (>= 0.8, `TensorSpec`): bf16 values are float32 bit patterns
rounded to their top 16 bits, handed over as uint16 buffers with dtype "bfloat16".
"""
import json
import os
import sys

import numpy as np
import safetensors

HIDDEN, LAYERS, HEADS, KV_HEADS, INTER, VOCAB = 960, 32, 15, 5, 2560, 49152
HEAD_DIM = HIDDEN // HEADS

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTER,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "vocab_size": VOCAB,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def shapes():
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)
        yield p + "mlp.gate_proj.weight", (INTER, HIDDEN)
        yield p + "mlp.up_proj.weight", (INTER, HIDDEN)
        yield p + "mlp.down_proj.weight", (HIDDEN, INTER)
        yield p + "input_layernorm.weight", (HIDDEN,)
        yield p + "post_attention_layernorm.weight", (HIDDEN,)
    yield "model.norm.weight", (HIDDEN,)


def bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> 16) & 1))
    return (u >> 16).astype(np.uint16)


def write(dirname, seed):
    os.makedirs(dirname, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors, keep_alive = {}, []
    for name, shape in shapes():
        if name.endswith("norm.weight"):
            x = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            x = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        bits = bf16_bits(x)
        keep_alive.append(bits)
        tensors[name] = safetensors.TensorSpec(
            dtype="bfloat16", shape=list(shape), data_ptr=bits.ctypes.data, data_len=bits.nbytes
        )
    path = os.path.join(dirname, "model.safetensors")
    safetensors.serialize_file(tensors, path, metadata={"format": "pt"})
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    n = sum(int(np.prod(s)) for _, s in shapes())
    print(f"{dirname}: {n / 1e6:.1f}M parameters, {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/dera-merge-bench"
    write(os.path.join(out, "a"), 1)
    write(os.path.join(out, "b"), 2)
