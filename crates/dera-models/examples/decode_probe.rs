//! Times decode steps of a random SmolLM2-135M-shaped model (no files needed).
//!
//! `cargo run --release -p dera-models --example decode_probe -- [layers] [steps]`

use std::time::Instant;

use dera_checkpoint::TensorMap;
use dera_models::{CausalLm, Device, ModelConfig, load_from_source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let layers: usize = args.next().map_or(Ok(30), |s| s.parse())?;
    let steps: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let (vocab, d, heads, kv, hd, ff) = (49152usize, 576usize, 9usize, 3usize, 64usize, 1536usize);
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": d,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "intermediate_size": ff, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
    });
    let cfg = ModelConfig::from_json(&cfg, "config.json".as_ref())?;
    let mut state = 0x2545f4914f6cdd1du64;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
            })
            .collect()
    };
    let mut map = TensorMap::new("random");
    map.insert("model.embed_tokens.weight", rand(vocab * d), vec![vocab, d]);
    map.insert("model.norm.weight", vec![1.0; d], vec![d]);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (n, o, inp) in [
            ("self_attn.q_proj", heads * hd, d),
            ("self_attn.k_proj", kv * hd, d),
            ("self_attn.v_proj", kv * hd, d),
            ("self_attn.o_proj", d, heads * hd),
            ("mlp.gate_proj", ff, d),
            ("mlp.up_proj", ff, d),
            ("mlp.down_proj", d, ff),
        ] {
            map.insert(format!("{p}.{n}.weight"), rand(o * inp), vec![o, inp]);
        }
        map.insert(format!("{p}.input_layernorm.weight"), vec![1.0; d], vec![d]);
        map.insert(
            format!("{p}.post_attention_layernorm.weight"),
            vec![1.0; d],
            vec![d],
        );
    }
    let dir = std::env::temp_dir();
    let m = load_from_source(&dir, &cfg, &map, &Device::flex())?;
    drop(map);
    let mut cache = m.model.new_cache();
    let prompt: Vec<u32> = (0..32).collect();
    let t = Instant::now();
    let _ = m
        .model
        .forward(&prompt, 1, &mut cache, false)?
        .try_into_vec_as::<f32>();
    println!(
        "prefill 32 tokens: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mut tok = 5u32;
    for _ in 0..steps {
        let out = m
            .model
            .forward(&[tok], 1, &mut cache, false)?
            .try_into_vec_as::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        tok = (out
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
            .0
            % 1000) as u32;
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let bytes = 4.0
        * (vocab * d + layers * (d * (heads + 2 * kv) * hd + heads * hd * d + 3 * d * ff)) as f64;
    println!(
        "{layers} layers: {ms:.2} ms/token; weights {:.0} MB -> floor at 43 GB/s {:.2} ms",
        bytes / 1e6,
        bytes / 43e6
    );
    Ok(())
}
