// Golden K-quant super-blocks and Q5_0 / Q5_1 blocks from ggml's own reference quantizers
// (quantize_row_q{2,3,4,5,6}_K_ref, quantize_row_q5_{0,1}_ref in ggml-quants.c), for
// crates/dera-kernels/tests/kquant_golden.rs. Built and run by
// kquant_golden.sh against the llama.cpp sources vendored in a pinned llama-cpp-python sdist.
//
// Output (little-endian), CASES times: u32 n, n f32 inputs, then the n/256 Q4_K, Q5_K and
// Q6_K super-blocks of that row (144, 176 and 210 bytes each), then its n/32 Q5_0 and Q5_1
// blocks (22 and 24 bytes each), then its n/256 Q3_K and Q2_K super-blocks (110 and 84 bytes).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-common.h"
#include "ggml-quants.h"

static uint32_t state = 0x2545F491u;
static float uniform(void) { // [-1, 1)
    state ^= state << 13; state ^= state >> 17; state ^= state << 5;
    return (float)(state >> 8) / 8388608.0f - 1.0f;
}
static float normalish(void) { return (uniform() + uniform() + uniform() + uniform()) * 0.8660254f; }

#define N 512
#define CASES 10

static void fill(int c, float *x) {
    for (int i = 0; i < N; i++) {
        switch (c) {
        case 0: x[i] = 0.02f * normalish(); break;                 // typical weights
        case 1: x[i] = normalish(); break;
        case 2: x[i] = 0.5f * (uniform() + 1.0f); break;           // all >= 0
        case 3: x[i] = -0.5f * (uniform() + 1.0f) - 0.01f; break;  // all < 0
        case 4: x[i] = i < 256 ? 0.0f : 0.05f * normalish(); break; // a zero super-block
        case 5: x[i] = (i % 97 == 0) ? (i % 2 ? 1.5f : -2.0f) : 0.02f * normalish(); break; // outliers
        case 6: x[i] = 1e-6f * normalish(); break;                 // scales below f16's normal range
        case 7: x[i] = 0.5f; break;                                // constant
        case 8: x[i] = ((i / 32) % 3 == 0) ? 0.0f : 0.1f * normalish(); break; // zero sub-blocks
        default: x[i] = 3.0f * normalish() + ((i / 16) % 2 ? 0.3f : -0.7f); break; // shifted halves
        }
    }
}

int main(void) {
    static float x[N];
    static block_q4_K q4[N / 256];
    static block_q5_K q5[N / 256];
    static block_q6_K q6[N / 256];
    static block_q5_0 q50[N / 32];
    static block_q5_1 q51[N / 32];
    static block_q3_K q3[N / 256];
    static block_q2_K q2[N / 256];
    for (int c = 0; c < CASES; c++) {
        fill(c, x);
        quantize_row_q4_K_ref(x, q4, N);
        quantize_row_q5_K_ref(x, q5, N);
        quantize_row_q6_K_ref(x, q6, N);
        quantize_row_q5_0_ref(x, q50, N);
        quantize_row_q5_1_ref(x, q51, N);
        quantize_row_q3_K_ref(x, q3, N);
        quantize_row_q2_K_ref(x, q2, N);
        uint32_t n = N;
        fwrite(&n, 4, 1, stdout);
        fwrite(x, 4, N, stdout);
        fwrite(q4, sizeof q4, 1, stdout);
        fwrite(q5, sizeof q5, 1, stdout);
        fwrite(q6, sizeof q6, 1, stdout);
        fwrite(q50, sizeof q50, 1, stdout);
        fwrite(q51, sizeof q51, 1, stdout);
        fwrite(q3, sizeof q3, 1, stdout);
        fwrite(q2, sizeof q2, 1, stdout);
    }
    return 0;
}
