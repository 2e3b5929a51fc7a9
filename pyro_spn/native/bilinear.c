/* The bilinear contraction behind every einsum layer, fused so that the products of pairs never leave registers.

   For every group g (an output region of one repetition), row a and column n:

       out[g, a, n] = sum_b P[g, b, n] * sum_c M[g, a, b, c] * Q[g, c, n]

   P [G, B, N], Q [G, C, N] and out [G, A, N] have contiguous rows of N (group strides given); M is read through
   strides, so the forward (a = output unit, b = left child, c = right child) and both children's gradients (the
   same weights, axes permuted) run the same code. FLOPs: 2 * G * A * B * C * N, plus 2 * G * A * B * N.

   A tile is OB rows of out by NV vectors of columns; per b, the inner sums t[a] = sum_c M[a, b, c] * Q[c] stay in
   OB * NV vector registers and are then multiplied by P[b] into OB * NV accumulators. Rows left over (A mod OB)
   run as tiles of one row; columns left over (N mod NV * VW) are copied into a zero-padded tile. Tiles of all
   groups are shared out among OpenMP threads.

   Built by pyro_spn.native with the host compiler (-O3 -march=native): GCC/Clang vector extensions, no
   intrinsics, so the same source serves AVX-512, AVX2, SSE and NEON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#else
#define VECTOR_BYTES 16
#endif

/* Rows per tile: the tile holds 2 * OB * NV vectors plus NV, within 32 vector registers (AVX-512, NEON) or 16. */
#ifndef OB
#if defined(__AVX512F__) || defined(__aarch64__)
#define OB 5
#else
#define OB 3
#endif
#endif
#ifndef NV
#define NV 2
#endif

#define DEFINE_BILINEAR(T, SUFFIX)                                                                               \
  enum { VW_##SUFFIX = VECTOR_BYTES / sizeof(T), TN_##SUFFIX = NV * VW_##SUFFIX };                               \
  typedef T vec_##SUFFIX __attribute__((vector_size(VECTOR_BYTES), aligned(sizeof(T)), may_alias));                      \
                                                                                                                 \
  static inline vec_##SUFFIX load_##SUFFIX(const T *p) {                                                         \
    return *(const vec_##SUFFIX *)p;                                                                             \
  }                                                                                                              \
                                                                                                                 \
  /* out[a, :TN] for a < ROWS (ROWS is a constant after inlining, so the tile lives in registers). */          \
  static inline __attribute__((always_inline)) void tile_##SUFFIX(                                              \
      const int rows, int64_t B, int64_t C, int64_t ld_p, int64_t ld_q, int64_t ld_out, const T *P,            \
      const T *Q, const T *M, int64_t ms_a, int64_t ms_b, int64_t ms_c, T *out) {                               \
    vec_##SUFFIX acc[OB][NV];                                                                                    \
    for (int r = 0; r < rows; r++)                                                                               \
      for (int v = 0; v < NV; v++) acc[r][v] = (vec_##SUFFIX){0};                                               \
    for (int64_t b = 0; b < B; b++) {                                                                            \
      vec_##SUFFIX t[OB][NV];                                                                                    \
      for (int r = 0; r < rows; r++)                                                                             \
        for (int v = 0; v < NV; v++) t[r][v] = (vec_##SUFFIX){0};                                               \
      const T *m = M + b * ms_b;                                                                                 \
      for (int64_t c = 0; c < C; c++) {                                                                          \
        vec_##SUFFIX q[NV];                                                                                      \
        for (int v = 0; v < NV; v++) q[v] = load_##SUFFIX(Q + c * ld_q + v * VW_##SUFFIX);                      \
        for (int r = 0; r < rows; r++) {                                                                         \
          const T w = m[r * ms_a + c * ms_c];                                                                    \
          for (int v = 0; v < NV; v++) t[r][v] += w * q[v];                                                      \
        }                                                                                                        \
      }                                                                                                          \
      for (int v = 0; v < NV; v++) {                                                                             \
        const vec_##SUFFIX p = load_##SUFFIX(P + b * ld_p + v * VW_##SUFFIX);                                   \
        for (int r = 0; r < rows; r++) acc[r][v] += p * t[r][v];                                                 \
      }                                                                                                          \
    }                                                                                                            \
    for (int r = 0; r < rows; r++)                                                                               \
      for (int v = 0; v < NV; v++) *(vec_##SUFFIX *)(out + r * ld_out + v * VW_##SUFFIX) = acc[r][v];            \
  }                                                                                                              \
                                                                                                                 \
  static void rows_##SUFFIX(int64_t rows, int64_t B, int64_t C, int64_t ld_p, int64_t ld_q, int64_t ld_out,    \
                            const T *P, const T *Q, const T *M, int64_t ms_a, int64_t ms_b, int64_t ms_c,       \
                            T *out) {                                                                            \
    if (rows == OB) {                                                                                            \
      tile_##SUFFIX(OB, B, C, ld_p, ld_q, ld_out, P, Q, M, ms_a, ms_b, ms_c, out);                               \
      return;                                                                                                    \
    }                                                                                                            \
    for (int64_t r = 0; r < rows; r++)                                                                           \
      tile_##SUFFIX(1, B, C, ld_p, ld_q, ld_out, P, Q, M + r * ms_a, ms_a, ms_b, ms_c, out + r * ld_out);        \
  }                                                                                                              \
                                                                                                                 \
  /* Returns 0, or 1 when the room for a partial tile could not be allocated. */                               \
  int bilinear_##SUFFIX(int64_t G, int64_t A, int64_t B, int64_t C, int64_t N, const T *P, int64_t p_gs,       \
                        const T *Q, int64_t q_gs, const T *M, int64_t m_gs, int64_t ms_a, int64_t ms_b,         \
                        int64_t ms_c, T *out, int64_t out_gs, int num_threads) {                                 \
    const int64_t row_blocks = (A + OB - 1) / OB, column_blocks = (N + TN_##SUFFIX - 1) / TN_##SUFFIX;         \
    const int64_t tiles = G * row_blocks * column_blocks;                                                        \
    int failed = 0;                                                                                              \
    _Pragma("omp parallel for schedule(static) num_threads(num_threads) reduction(| : failed)")                \
    for (int64_t item = 0; item < tiles; item++) {                                                               \
      const int64_t g = item / (row_blocks * column_blocks), rest = item % (row_blocks * column_blocks);        \
      const int64_t a0 = rest / column_blocks * OB, n0 = rest % column_blocks * TN_##SUFFIX;                    \
      const int64_t rows = A - a0 < OB ? A - a0 : OB, columns = N - n0;                                         \
      const T *p = P + g * p_gs + n0, *q = Q + g * q_gs + n0, *m = M + g * m_gs + a0 * ms_a;                   \
      T *o = out + g * out_gs + a0 * N + n0;                                                                     \
      if (columns >= TN_##SUFFIX) {                                                                              \
        rows_##SUFFIX(rows, B, C, N, N, N, p, q, m, ms_a, ms_b, ms_c, o);                                        \
        continue;                                                                                                \
      }                                                                                                          \
      /* the last columns: copied into zero-padded rows of TN */                                               \
      T *room = calloc((size_t)(B + C + OB) * TN_##SUFFIX, sizeof(T));                                          \
      if (room == NULL) {                                                                                        \
        failed = 1;                                                                                              \
        continue;                                                                                                \
      }                                                                                                          \
      T *p_pad = room, *q_pad = room + B * TN_##SUFFIX, *o_pad = q_pad + C * TN_##SUFFIX;                       \
      for (int64_t b = 0; b < B; b++) memcpy(p_pad + b * TN_##SUFFIX, p + b * N, columns * sizeof(T));        \
      for (int64_t c = 0; c < C; c++) memcpy(q_pad + c * TN_##SUFFIX, q + c * N, columns * sizeof(T));        \
      rows_##SUFFIX(rows, B, C, TN_##SUFFIX, TN_##SUFFIX, TN_##SUFFIX, p_pad, q_pad, m, ms_a, ms_b, ms_c,       \
                    o_pad);                                                                                      \
      for (int64_t r = 0; r < rows; r++) memcpy(o + r * N, o_pad + r * TN_##SUFFIX, columns * sizeof(T));     \
      free(room);                                                                                                \
    }                                                                                                            \
    return failed;                                                                                               \
  }

DEFINE_BILINEAR(float, f32)
DEFINE_BILINEAR(double, f64)
