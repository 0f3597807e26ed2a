#!/usr/bin/env python3
"""Requantizes a GGUF model into the tensor types one of llama.cpp's file types holds, with ggml's
own reference quantizers (a shared library built from ggml-quants.c); norms stay F32, metadata is
copied. Matrices whose rows are not whole 256-weight super-blocks take llama.cpp's fallback.

- q4_k_m: Q4_K, with attn_v and every other ffn_down in Q6_K (fallbacks Q5_0, Q8_0)
- q3_k_m: Q3_K, with attn_v, attn_output and ffn_down in Q4_K (fallbacks IQ4_NL, Q5_0)
- iq4_xs: IQ4_XS (fallback IQ4_NL)

    python requant_gguf.py SRC.gguf OUT.gguf LIBQUANTS.so [SCHEME]   (check_q4_k_m.sh runs it)
"""
import ctypes
import os
import re
import sys

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType


def main() -> None:
    src, out, lib_path = sys.argv[1:4]
    scheme = sys.argv[4] if len(sys.argv) > 4 else "q4_k_m"
    lib = ctypes.CDLL(lib_path)
    quantizers = {Q.Q4_K: lib.quantize_row_q4_K_ref, Q.Q6_K: lib.quantize_row_q6_K_ref,
                  Q.Q5_0: lib.quantize_row_q5_0_ref, Q.Q8_0: lib.quantize_row_q8_0_ref,
                  Q.Q3_K: lib.quantize_row_q3_K_ref, Q.IQ4_NL: lib.quantize_row_iq4_nl_ref,
                  Q.IQ4_XS: lib.quantize_row_iq4_xs_ref}
    fallback = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0, Q.Q3_K: Q.IQ4_NL, Q.IQ4_XS: Q.IQ4_NL}
    for f in quantizers.values():
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    # Written beside OUT and renamed when whole: an interrupted run leaves no half file.
    tmp = out + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    counts = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if values.ndim == 1:
            writer.add_tensor(t.name, values)
            counts["F32"] = counts.get("F32", 0) + 1
            continue
        rows, cols = values.shape
        m = re.match(r"blk\.(\d+)\.", t.name)
        if scheme == "q4_k_m":
            more_bits = ("attn_v" in t.name) or ("ffn_down" in t.name and m and int(m.group(1)) % 2 == 0)
            want = Q.Q6_K if more_bits else Q.Q4_K
        elif scheme == "q3_k_m":
            more_bits = any(k in t.name for k in ("attn_v", "attn_output", "ffn_down"))
            want = Q.Q4_K if more_bits else Q.Q3_K
        elif scheme == "iq4_xs":
            want = Q.IQ4_XS
        else:
            raise SystemExit(f"unknown scheme {scheme!r} (q4_k_m, q3_k_m, iq4_xs)")
        if cols % 256:
            want = fallback[want]
        block, size = gguf.GGML_QUANT_SIZES[want]
        data = np.empty((rows, cols // block * size), dtype=np.uint8)
        x = np.ascontiguousarray(values)
        quantizers[want](x.ctypes.data, data.ctypes.data, x.size)
        writer.add_tensor(t.name, data, raw_dtype=want)
        counts[want.name] = counts.get(want.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    print(f"wrote {out}: {counts}")


if __name__ == "__main__":
    main()
