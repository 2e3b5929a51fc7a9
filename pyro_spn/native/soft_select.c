/* Soft (Gumbel-Softmax) selections of sum units, fused, with counter-based noise that is recomputed, not stored.

   For every sample n, group g (a region of one repetition) and unit k of the group, with Q children (pairs):

       y[n, g, k, :] = softmax((logw[g, k, :] + bias[n, g, :] + gumbel(seed, n, g, k, :)) * inv_tau)
       pairs[n, g, :] = sum_k s[n, g, k] * y[n, g, k, :]

   logw [G, K, Q] is contiguous (or NULL: zeros); s [N, G, K], bias [N, G, Q] (optional: evidence's child
   log-likelihoods, or a region's blended logits with K = 1 and no logw) and pairs [N, G, Q] have contiguous rows
   (of K or Q) and any strides over n and g, so that [G, N, ...] layouts need no copy. The forward writes pairs
   without ever holding y or the noise beyond one row; the backward draws the same noise again (it is a pure function of the seed and the
   element's index) and returns the gradients of s, logw, bias and inv_tau. Memory: O(inputs + outputs).

   Noise: a row (n, g, k) has a 64-bit key splitmix64(seed + row * golden); element q's 32 bits are two rounds of
   murmur3's finalizer keyed by the key's halves, its uniform u = (bits >> 8 + 1/2) / 2^24 lies in (0, 1), and
   gumbel = -log(-log u). Float32 runs vectorized with Cephes' logf/expf polynomials (a few ulp); float64 runs
   scalar with libm. gumbel_* writes the noise itself, for tests of the fused functions against a plain reference.

   Built by pyro_spn.native with the host compiler (-O3 -march=native): GCC/Clang vector extensions, no
   intrinsics. Groups are shared out among OpenMP threads (each group's logw gradient belongs to one thread). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define SOFT_VECTOR_BYTES 64
#elif defined(__AVX__)
#define SOFT_VECTOR_BYTES 32
#else
#define SOFT_VECTOR_BYTES 16
#endif
#define VF (SOFT_VECTOR_BYTES / 4)

typedef float vf __attribute__((vector_size(SOFT_VECTOR_BYTES)));
typedef int32_t vi __attribute__((vector_size(SOFT_VECTOR_BYTES)));
typedef uint32_t vu __attribute__((vector_size(SOFT_VECTOR_BYTES)));
typedef float vf_unaligned __attribute__((vector_size(SOFT_VECTOR_BYTES), aligned(4), may_alias));

#define SPLAT(c) ((vf){0} + (c))

/* ---- noise ------------------------------------------------------------------------------------------------ */
static inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static inline uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  return x ^ (x >> 16);
}

static inline vu vfmix32(vu x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  return x ^ (x >> 16);
}

typedef struct {
  uint32_t k1, k2;
} row_key;

static inline row_key key_of(uint64_t seed, int64_t row) {
  const uint64_t key = splitmix64(seed + (uint64_t)row * 0xD1B54A32D192ED03ull);
  return (row_key){(uint32_t)key, (uint32_t)(key >> 32)};
}

static inline uint32_t bits_of(row_key key, uint32_t q) { return fmix32(fmix32(q * 0x9E3779B9u ^ key.k1) ^ key.k2); }

static inline vu vbits_of(row_key key, vu q) { return vfmix32(vfmix32(q * 0x9E3779B9u ^ key.k1) ^ key.k2); }

/* ---- float32 math (Cephes) ---------------------------------------------------------------------------------- */
static inline vf select_vf(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* log x for normal positive x, in Estrin form (a short dependency chain) */
static inline vf log_vf(vf x) {
  const vi bits = (vi)x;
  const vi exponent = ((bits >> 23) & 0xff) - 126;
  vf m = (vf)((bits & 0x007fffff) | 0x3f000000); /* [0.5, 1) */
  const vi small = m < 0.70710678f;              /* -1 where true */
  const vf e = __builtin_convertvector(exponent + small, vf);
  m = m + (vf)((vi)m & small) - 1.0f; /* 2m - 1 where small, else m - 1 */
  const vf m2 = m * m, m4 = m2 * m2;
  const vf p01 = SPLAT(3.3333331174E-1f) + m * -2.4999993993E-1f;
  const vf p23 = SPLAT(2.0000714765E-1f) + m * -1.6668057665E-1f;
  const vf p45 = SPLAT(1.4249322787E-1f) + m * -1.2420140846E-1f;
  const vf p67 = SPLAT(1.1676998740E-1f) + m * -1.1514610310E-1f;
  const vf p = (p01 + m2 * p23) + m4 * ((p45 + m2 * p67) + m4 * 7.0376836292E-2f);
  const vf y = p * m * m2 + e * -2.12194440e-4f - 0.5f * m2;
  return m + y + e * 0.693359375f;
}

/* exp x, flushed to 0 below -87.3 (the softmax's far tail) */
static inline vf exp_vf(vf x) {
  const vi tiny = x < -87.3f;
  x = select_vf(tiny, SPLAT(-87.3f), x);
  const vf fx = x * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(fx, vi);
  n -= (vi)(__builtin_convertvector(n, vf) > fx) & 1; /* floor */
  const vf nf = __builtin_convertvector(n, vf);
  x = x - nf * 0.693359375f - nf * -2.12194440e-4f;
  const vf x2 = x * x;
  vf p = SPLAT(1.9875691500E-4f) * x + 1.3981999507E-3f;
  p = p * x + 8.3334519073E-3f;
  p = p * x + 4.1665795894E-2f;
  p = p * x + 1.6666665459E-1f;
  p = p * x + 5.0000001201E-1f;
  const vf y = (p * x2 + x + 1.0f) * (vf)((n + 127) << 23);
  return (vf)((vi)y & ~tiny);
}

/* The row's z over Q (padded to whole vectors: padding lanes get -inf); returns max_q z. */
static float row_z_f32(int64_t Q, const float *a, const float *b, row_key key, float inv_tau, float *z) {
  vf best = SPLAT(-INFINITY);
  static const uint32_t lanes[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  vu lane;
  memcpy(&lane, lanes, sizeof lane);
  for (int64_t q = 0; q < Q; q += VF) {
    vf av, bv = SPLAT(0.0f);
    if (q + VF <= Q) {
      av = SPLAT(0.0f);
      if (a != NULL) av = *(const vf_unaligned *)(a + q);
      if (b != NULL) bv = *(const vf_unaligned *)(b + q);
    } else {
      float at[VF] = {0}, bt[VF] = {0};
      for (int64_t i = 0; i < Q - q; i++) {
        at[i] = a == NULL ? 0.0f : a[q + i];
        bt[i] = b == NULL ? 0.0f : b[q + i];
      }
      memcpy(&av, at, sizeof av);
      memcpy(&bv, bt, sizeof bv);
    }
    const vu bits = vbits_of(key, lane + (uint32_t)q);
    const vf u = __builtin_convertvector(bits >> 8, vf) * (1.0f / 16777216.0f) + (0.5f / 16777216.0f);
    vf zv = (av + bv - log_vf(-log_vf(u))) * inv_tau;
    if (q + VF > Q) zv = select_vf(__builtin_convertvector(lane, vi) >= (int32_t)(Q - q), SPLAT(-INFINITY), zv);
    *(vf *)(z + q) = zv;
    best = select_vf(zv > best, zv, best);
  }
  float m = best[0];
  for (int i = 1; i < VF; i++) m = best[i] > m ? best[i] : m;
  return m;
}

/* e = exp(z - m) over the padded row (padding: 0); returns the sum over the row. */
static float row_exp_f32(int64_t Q, const float *z, float m, float *e) {
  vf sum = SPLAT(0.0f);
  for (int64_t q = 0; q < Q; q += VF) {
    const vf ev = exp_vf(*(const vf *)(z + q) - m);
    *(vf *)(e + q) = ev;
    sum += ev;
  }
  float total = 0.0f;
  for (int i = 0; i < VF; i++) total += sum[i];
  return total;
}

/* ---- float64 math (libm, scalar) ---------------------------------------------------------------------------- */
static double row_z_f64(int64_t Q, const double *a, const double *b, row_key key, double inv_tau, double *z) {
  double m = -INFINITY;
  for (int64_t q = 0; q < Q; q++) {
    const double u = (double)(bits_of(key, (uint32_t)q) >> 8) * (1.0 / 16777216.0) + 0.5 / 16777216.0;
    z[q] = ((a == NULL ? 0.0 : a[q]) + (b == NULL ? 0.0 : b[q]) - log(-log(u))) * inv_tau;
    m = z[q] > m ? z[q] : m;
  }
  return m;
}

static double row_exp_f64(int64_t Q, const double *z, double m, double *e) {
  double total = 0.0;
  for (int64_t q = 0; q < Q; q++) total += e[q] = exp(z[q] - m);
  return total;
}

/* ---- the kernels, for either type ---------------------------------------------------------------------------- */
#define PADDED(Q) (((Q) + VF - 1) / VF * VF)

#define DEFINE_SOFT(T, SUFFIX)                                                                                   \
  /* pairs [N, G, Q] (overwritten); returns 1 if row buffers could not be allocated. */                          \
  int soft_select_forward_##SUFFIX(int64_t N, int64_t G, int64_t K, int64_t Q, const T *s, int64_t s_ns,       \
                                   int64_t s_gs, const T *logw, const T *bias, int64_t b_ns, int64_t b_gs,       \
                                   T inv_tau, uint64_t seed, T *pairs, int64_t p_ns, int64_t p_gs,               \
                                   int num_threads) {                                                            \
    int failed = 0;                                                                                              \
    _Pragma("omp parallel num_threads(num_threads) reduction(| : failed)") {                                     \
      T *z = aligned_alloc(64, (PADDED(Q) * 2 * sizeof(T) + 63) / 64 * 64);                                      \
      if (z == NULL) failed = 1;                                                                                 \
      T *e = z + PADDED(Q);                                                                                      \
      _Pragma("omp for schedule(static)") for (int64_t g = 0; g < G; g++) {                                      \
        if (z == NULL) continue;                                                                                 \
        for (int64_t n = 0; n < N; n++) {                                                                        \
          T *out = pairs + n * p_ns + g * p_gs;                                                                  \
          const T *b = bias == NULL ? NULL : bias + n * b_ns + g * b_gs;                                         \
          memset(out, 0, Q * sizeof(T));                                                                        \
          for (int64_t k = 0; k < K; k++) {                                                                      \
            const int64_t row = (n * G + g) * K + k;                                                             \
            const T m = row_z_##SUFFIX(Q, logw == NULL ? NULL : logw + (g * K + k) * Q, b, key_of(seed, row),    \
                                       inv_tau, z);                                                              \
            const T scale = s[n * s_ns + g * s_gs + k] / row_exp_##SUFFIX(Q, z, m, e);                           \
            for (int64_t q = 0; q < Q; q++) out[q] += e[q] * scale;                                             \
          }                                                                                                      \
        }                                                                                                        \
      }                                                                                                          \
      free(z);                                                                                                   \
    }                                                                                                            \
    return failed;                                                                                               \
  }                                                                                                              \
                                                                                                                 \
  /* Gradients for grad_pairs (pairs' layout): of s (s's layout), logw [G, K, Q] (accumulated), bias (bias's      \
     layout, written) and inv_tau (grad_inv_tau[0], written), each where its pointer is not NULL. */             \
  int soft_select_backward_##SUFFIX(int64_t N, int64_t G, int64_t K, int64_t Q, const T *s, int64_t s_ns,      \
                                    int64_t s_gs, const T *logw, const T *bias, int64_t b_ns, int64_t b_gs,      \
                                    T inv_tau, uint64_t seed, const T *grad_pairs, int64_t p_ns, int64_t p_gs,   \
                                    T *grad_s, T *grad_logw, T *grad_bias, double *grad_inv_tau,                 \
                                    int num_threads) {                                                           \
    int failed = 0;                                                                                              \
    double tau_total = 0.0;                                                                                      \
    _Pragma("omp parallel num_threads(num_threads) reduction(| : failed) reduction(+ : tau_total)") {            \
      T *z = aligned_alloc(64, (PADDED(Q) * 2 * sizeof(T) + 63) / 64 * 64);                                      \
      if (z == NULL) failed = 1;                                                                                 \
      T *e = z + PADDED(Q);                                                                                      \
      _Pragma("omp for schedule(static)") for (int64_t g = 0; g < G; g++) {                                      \
        if (z == NULL) continue;                                                                                 \
        for (int64_t n = 0; n < N; n++) {                                                                        \
          const T *gp = grad_pairs + n * p_ns + g * p_gs;                                                        \
          const T *b = bias == NULL ? NULL : bias + n * b_ns + g * b_gs;                                         \
          T *gb = grad_bias == NULL ? NULL : grad_bias + n * b_ns + g * b_gs;                                    \
          if (gb != NULL) memset(gb, 0, Q * sizeof(T));                                                         \
          for (int64_t k = 0; k < K; k++) {                                                                      \
            const int64_t row = (n * G + g) * K + k;                                                             \
            const T m = row_z_##SUFFIX(Q, logw == NULL ? NULL : logw + (g * K + k) * Q, b, key_of(seed, row),    \
                                       inv_tau, z);                                                              \
            const T inv_sum = (T)1 / row_exp_##SUFFIX(Q, z, m, e);                                               \
            T dot = 0;                                                                                           \
            for (int64_t q = 0; q < Q; q++) dot += e[q] * gp[q];                                                 \
            dot *= inv_sum;                                                                                      \
            if (grad_s != NULL) grad_s[n * s_ns + g * s_gs + k] = dot;                                           \
            const T weight = s[n * s_ns + g * s_gs + k] * inv_sum; /* dL/dz_q = weight * e_q * (gp_q - dot) */  \
            T *gw = grad_logw == NULL ? NULL : grad_logw + (g * K + k) * Q;                                      \
            T tau_row = 0;                                                                                       \
            for (int64_t q = 0; q < Q; q++) {                                                                    \
              const T dz = weight * e[q] * (gp[q] - dot);                                                        \
              if (gw != NULL) gw[q] += dz * inv_tau;                                                             \
              if (gb != NULL) gb[q] += dz * inv_tau;                                                             \
              tau_row += dz * z[q];                                                                              \
            }                                                                                                    \
            tau_total += (double)(tau_row / inv_tau); /* dz/d inv_tau = z / inv_tau */                           \
          }                                                                                                      \
        }                                                                                                        \
      }                                                                                                          \
      free(z);                                                                                                   \
    }                                                                                                            \
    if (grad_inv_tau != NULL) grad_inv_tau[0] = tau_total;                                                       \
    return failed;                                                                                               \
  }                                                                                                              \
                                                                                                                 \
  /* The noise the kernels draw: gumbel [N, G, K, Q]. */                                                         \
  int soft_select_gumbel_##SUFFIX(int64_t N, int64_t G, int64_t K, int64_t Q, uint64_t seed, T *gumbel) {       \
    T *z = aligned_alloc(64, (PADDED(Q) * sizeof(T) + 63) / 64 * 64);                                           \
    if (z == NULL) return 1;                                                                                     \
    for (int64_t row = 0; row < N * G * K; row++) {                                                              \
      row_z_##SUFFIX(Q, NULL, NULL, key_of(seed, row), (T)1, z);                                                 \
      memcpy(gumbel + row * Q, z, Q * sizeof(T));                                                                \
    }                                                                                                            \
    free(z);                                                                                                     \
    return 0;                                                                                                    \
  }

DEFINE_SOFT(float, f32)
DEFINE_SOFT(double, f64)
