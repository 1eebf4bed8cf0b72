/*
 * The rate this machine reads memory, as a decoding step's products read it: every thread
 * streams its share of a large array once, summing it with the vector units (bench/fused_step.py
 * measures the fused step against it). Not part of the server.
 */
#include <stdint.h>

float read_all(const float *data, int64_t n, int threads) {
    float total = 0.f;
#pragma omp parallel for simd num_threads(threads) schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < n; i++) total += data[i];
    return total;
}
