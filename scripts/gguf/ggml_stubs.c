// The ggml.c symbols that ggml-quants.c references outside its reference quantizers, for
// building those quantizers alone (kquant_golden.sh, check_q4_k_m.sh). None is ever called.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ggml.h"

void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; abort(); }
const char *ggml_type_name(enum ggml_type type) { (void)type; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void)type; abort(); }
