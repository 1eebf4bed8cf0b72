/*
 * One decoding step of a GPT-2 model for one row, in one OpenMP parallel region.
 *
 * Why this exists: at one row a decoding step is memory-bound (every weight is read
 * once) and short, so the time between operators counts. oneDNN's packed products read
 * about 24 GB/s at one row on this project's 2-core EPYC; the plain dot products below,
 * each weight row read once in order, read 33-35 GB/s there (measured on GPT-2 small's
 * weights), about the rate llama.cpp's server reaches on the same machine. Between two
 * products there is a barrier of the thread team, not a return to Python.
 *
 * The arithmetic is GPT-2's (transformers' GPT2LMHeadModel, which follows Radford et
 * al., "Language Models are Unsupervised Multitask Learners", 2019): pre-norm blocks,
 * fused query/key/value projection, softmax attention over the KV cache, a two-layer
 * MLP. The float32 sums run in another order than PyTorch's, and e^x (softmax, the tanh
 * of GELU) is a polynomial good to 1e-7 (exp_approx), so the logits agree with
 * transformers' to about 1e-5 (checked against the lean step on every model as it loads,
 * app/engine/lean.py).
 *
 * Weights are [out_features, in_features], row-major (nn.Linear's layout): output j's
 * weights are one contiguous row. The KV cache is transformers' layout for one row,
 * [heads, columns, head_dim], given by each layer's head and column strides (floats).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { ACT_GELU_TANH = 0, ACT_GELU_ERF = 1, ACT_RELU = 2 };

typedef struct {
    const float *ln1_weight, *ln1_bias;
    const float *qkv_weight, *qkv_bias;   /* [3 d_model, d_model] */
    const float *proj_weight, *proj_bias; /* [d_model, d_model] */
    const float *ln2_weight, *ln2_bias;
    const float *fc_weight, *fc_bias;     /* [d_mlp, d_model] */
    const float *out_weight, *out_bias;   /* [d_model, d_mlp] */
    float scale;                          /* the attention scores' factor */
} gpt2_block;

typedef struct {
    int64_t d_model, heads, head_dim, d_mlp, vocab, positions, layers;
    float eps;
    int32_t activation;
    const float *token_embedding;    /* [vocab, d_model] */
    const float *position_embedding; /* [positions, d_model] */
    const float *lnf_weight, *lnf_bias;
    const float *head_weight, *head_bias; /* [vocab, d_model]; no bias: NULL */
    const gpt2_block *blocks;             /* [layers] */
} gpt2_model;

typedef struct {
    float *keys, *values;              /* this row's cache of one layer */
    int64_t head_stride, column_stride; /* in floats, the same for keys and values */
} gpt2_cache_layer;

/* The work space a step needs: hidden, normed, qkv (3), mixed: d_model * 6, then the MLP's
   d_mlp and each head's scores over every position. */
int64_t gpt2_scratch_floats(const gpt2_model *m) {
    return m->d_model * 6 + m->d_mlp + m->heads * m->positions;
}

static void layer_norm(const float *x, const float *weight, const float *bias, float *out,
                       int64_t n, float eps) {
    /* Two passes, as torch's layer_norm: the mean, then the variance about it. */
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float rstd = 1.f / sqrtf(var / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
}

static inline float dot(const float *restrict w, const float *restrict x, int64_t n) {
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += w[i] * x[i];
    return acc;
}

/*
 * e^x in float32, written so that a loop of it vectorizes (libm's expf is a call per
 * element, and floorf and fminf keep GCC from vectorizing without -ffast-math): Cody-Waite
 * reduction by ln 2 and Cephes' degree-6 polynomial (S. Moshier, Cephes Math Library,
 * expf.c). Relative error under 1e-7 over [-87, 88] (checked against float64 exp); x is
 * clamped to that range. k is rounded to the nearest integer by adding and subtracting
 * 1.5 * 2^23, which leaves no fraction bits.
 */
static inline float exp_approx(float x) {
    x = x < -87.f ? -87.f : x;
    x = x > 88.f ? 88.f : x;
    float k = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    int32_t bits = ((int32_t)k + 127) << 23; /* 2^k */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh(u) = 1 - 2 / (e^{2u} + 1): absolute error under 2e-7. */
static inline float tanh_approx(float u) { return 1.f - 2.f / (exp_approx(2.f * u) + 1.f); }

/* What a product does with its output: writes it, adds it (to the residual stream), or
   writes it through the MLP's activation. */
enum { PUT = 0, ADD = 1, ACTIVATE = 2 };
#define BLOCK 16 /* output rows a thread finishes together (the epilogue's vector) */

static void finish(float *v, int64_t n, int32_t kind) {
    if (kind == ACT_GELU_TANH) { /* transformers' NewGELUActivation (GPT-2's "gelu_new") */
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float x = v[j], u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
            v[j] = 0.5f * x * (1.f + tanh_approx(u));
        }
    } else if (kind == ACT_GELU_ERF) {
        for (int64_t j = 0; j < n; j++) v[j] = 0.5f * v[j] * (1.f + erff(v[j] * 0.70710678f));
    } else {
        for (int64_t j = 0; j < n; j++) v[j] = v[j] > 0.f ? v[j] : 0.f;
    }
}

/* y = W x + b for `out` rows of W, shared among the team in blocks of rows (call inside
   the region; the team waits for all rows at the end). */
static void product(const float *W, const float *b, const float *x, float *y, int64_t out,
                    int64_t in, int mode, int32_t activation) {
#pragma omp for schedule(static)
    for (int64_t start = 0; start < out; start += BLOCK) {
        int64_t n = out - start < BLOCK ? out - start : BLOCK;
        float v[BLOCK];
        for (int64_t j = 0; j < n; j++)
            v[j] = dot(W + (start + j) * in, x, in) + (b ? b[start + j] : 0.f);
        if (mode == ACTIVATE) finish(v, n, activation);
        for (int64_t j = 0; j < n; j++) y[start + j] = mode == ADD ? y[start + j] + v[j] : v[j];
    }
}

/* Each head's query against the cached keys, this step's key and value written first. */
static void attend(const gpt2_model *m, const gpt2_cache_layer *c, const float *qkv,
                   float *mixed, float *scores, int64_t column, float scale) {
    const int64_t d = m->d_model, hd = m->head_dim, n = column + 1;
#pragma omp for schedule(static)
    for (int64_t h = 0; h < m->heads; h++) {
        const float *q = qkv + h * hd;
        float *keys = c->keys + h * c->head_stride, *values = c->values + h * c->head_stride;
        float *key = keys + column * c->column_stride, *value = values + column * c->column_stride;
        for (int64_t i = 0; i < hd; i++) {
            key[i] = qkv[d + h * hd + i];
            value[i] = qkv[2 * d + h * hd + i];
        }
        float *s = scores + h * m->positions, top = -INFINITY, total = 0.f;
        for (int64_t t = 0; t < n; t++) {
            s[t] = dot(q, keys + t * c->column_stride, hd) * scale;
            top = s[t] > top ? s[t] : top;
        }
#pragma omp simd reduction(+ : total)
        for (int64_t t = 0; t < n; t++) {
            s[t] = exp_approx(s[t] - top);
            total += s[t];
        }
        float *o = mixed + h * hd;
        for (int64_t i = 0; i < hd; i++) o[i] = 0.f;
        for (int64_t t = 0; t < n; t++) {
            const float *v = values + t * c->column_stride, p = s[t] / total;
#pragma omp simd
            for (int64_t i = 0; i < hd; i++) o[i] += p * v[i];
        }
    }
}

/*
 * Feed `token` at `position`; write its keys and values at `column` of each layer's
 * cache (which must have room) and the next-token logits [vocab] to `logits`.
 * Returns 0, or -1 for a token or position out of range (nothing is written then).
 */
int gpt2_step(const gpt2_model *m, const gpt2_cache_layer *cache, int64_t token,
              int64_t position, int64_t column, float *logits, float *scratch, int threads) {
    if (token < 0 || token >= m->vocab || position < 0 || position >= m->positions ||
        column < 0 || column >= m->positions)
        return -1;
    const int64_t d = m->d_model;
    float *hidden = scratch, *normed = hidden + d, *qkv = normed + d, *mixed = qkv + 3 * d;
    float *mlp = mixed + d, *scores = mlp + m->d_mlp;
    for (int64_t i = 0; i < d; i++)
        hidden[i] = m->token_embedding[token * d + i] + m->position_embedding[position * d + i];
#pragma omp parallel num_threads(threads)
    {
        for (int64_t l = 0; l < m->layers; l++) {
            const gpt2_block *b = &m->blocks[l];
#pragma omp single
            layer_norm(hidden, b->ln1_weight, b->ln1_bias, normed, d, m->eps);
            product(b->qkv_weight, b->qkv_bias, normed, qkv, 3 * d, d, PUT, 0);
            attend(m, &cache[l], qkv, mixed, scores, column, b->scale);
            product(b->proj_weight, b->proj_bias, mixed, hidden, d, d, ADD, 0);
#pragma omp single
            layer_norm(hidden, b->ln2_weight, b->ln2_bias, normed, d, m->eps);
            product(b->fc_weight, b->fc_bias, normed, mlp, m->d_mlp, d, ACTIVATE, m->activation);
            product(b->out_weight, b->out_bias, mlp, hidden, d, m->d_mlp, ADD, 0);
        }
#pragma omp single
        layer_norm(hidden, m->lnf_weight, m->lnf_bias, normed, d, m->eps);
        product(m->head_weight, m->head_bias, normed, logits, m->vocab, d, PUT, 0);
    }
    return 0;
}
