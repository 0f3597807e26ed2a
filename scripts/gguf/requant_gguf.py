#!/usr/bin/env python3
"""Requantizes a GGUF model into the tensor types llama.cpp's Q4_K_M files hold, with ggml's own
reference quantizers (a shared library built from ggml-quants.c): rows that are whole 256-weight
super-blocks in Q4_K (ffn_down of every other layer and attn_v in Q6_K), other rows in llama.cpp's
fallbacks (Q5_0 for Q4_K, Q8_0 for Q6_K), norms in F32; metadata copied.

    python requant_gguf.py SRC.gguf OUT.gguf LIBQUANTS.so   (check_q4_k_m.sh runs it)
"""
import ctypes
import re
import sys

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType


def main() -> None:
    src, out, lib_path = sys.argv[1:4]
    lib = ctypes.CDLL(lib_path)
    quantizers = {Q.Q4_K: lib.quantize_row_q4_K_ref, Q.Q6_K: lib.quantize_row_q6_K_ref,
                  Q.Q5_0: lib.quantize_row_q5_0_ref, Q.Q8_0: lib.quantize_row_q8_0_ref}
    for f in quantizers.values():
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
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
        more_bits = ("attn_v" in t.name) or ("ffn_down" in t.name and m and int(m.group(1)) % 2 == 0)
        want = Q.Q6_K if more_bits else Q.Q4_K
        if cols % 256:
            want = Q.Q8_0 if want == Q.Q6_K else Q.Q5_0
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
    print(f"wrote {out}: {counts}")


if __name__ == "__main__":
    main()
