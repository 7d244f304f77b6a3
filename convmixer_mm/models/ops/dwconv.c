/* Depthwise 2-D convolution over NHWC (channels_last) tensors: stride 1,
 * zero padding, output as large as the input ('same').
 *
 * Plain C with GCC vector extensions (gcc and clang), no torch headers, so
 * that it compiles in about a second; convmixer_mm/models/ops/dwconv.py
 * builds it at first use and calls it through ctypes.
 *
 * Every task copies one block of VLEN channels of one image into a small
 * zero-padded buffer (pixel-major, one vector per pixel): the kernels then
 * run without bounds checks on L1/L2-resident, aligned data, instead of
 * striding C floats between pixels. Channels past C stay zero.
 *
 * The source is read twice (see the end): once for float, once for double,
 * which torch.autograd.gradcheck uses.
 */
#ifndef DW_T
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX512F__
#define DW_VBYTES 64
#else
#define DW_VBYTES 32
#endif
#define DW_INLINE static inline __attribute__((always_inline))

typedef void (*dw_item_fn)(const void *args, long item);

typedef struct {
  dw_item_fn fn;
  const void *args;
  long n;
  long next; /* the next unclaimed item */
} dw_task;

/* Items are claimed one at a time, so that a thread descheduled on a busy
 * machine delays only its current item. */
static void *dw_worker(void *p) {
  dw_task *t = p;
  for (long i; (i = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED)) < t->n;)
    t->fn(t->args, i);
  return NULL;
}

/* Runs fn(args, i) for every i < n on up to nthreads threads. Built with
 * -fopenmp, these are torch's own OpenMP threads (a process loads one
 * libgomp.so.1, torch's): no threads are created per call, and none are
 * left spinning after torch's last parallel region while ours start. */
static void dw_parallel_for(dw_item_fn fn, const void *args, long n,
                            int nthreads) {
  dw_task task = {fn, args, n, 0};
  if (nthreads > n) nthreads = (int)n;
  if (nthreads < 1) nthreads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  dw_worker(&task);
  return;
#endif
  pthread_t threads[nthreads];
  int started = 1;
  for (int t = 1; t < nthreads; ++t) {
    if (pthread_create(&threads[t], NULL, dw_worker, &task)) break;
    started = t + 1;
  }
  dw_worker(&task);
  for (int t = 1; t < started; ++t) pthread_join(threads[t], NULL);
}

typedef struct {
  const void *in;   /* (B, H, W, C) */
  const void *w;    /* (C, K, K) */
  const void *bias; /* (C) or NULL */
  const void *go;   /* (B, H, W, C), grad of the output */
  void *out;        /* (B, H, W, C) or (C, K, K) */
  long B, H, W, C;
  int K, pad_top, pad_left;
  /* Inference blocks only (NULL / 0 otherwise): the input is first mapped
   * to in * in_scale + in_shift per channel (the previous block's BN, with
   * the padding still zero), and the output becomes
   * x + out_scale * act(conv(x) + bias), act 1 = ReLU, 2 = exact GELU. */
  const void *in_scale, *in_shift, *out_scale;
  int act;
} dw_args;

#define DW_T float
#define DW_I int
#define DW_NAME(name) name##_f32
#include __FILE__
#undef DW_T
#undef DW_I
#undef DW_NAME
#define DW_T double
#define DW_I long long
#define DW_NAME(name) name##_f64
#include __FILE__

#else /* the kernels for one scalar type DW_T */

#define VLEN ((long)(DW_VBYTES / sizeof(DW_T)))
typedef DW_T DW_NAME(vec) __attribute__((vector_size(DW_VBYTES)));
#define V DW_NAME(vec)

/* Copies channels [c0, c0 + n) of one (H, W, C) image into buf, a
 * (H + ph, W + pw) grid of vectors, at offset (top, left). */
DW_INLINE void DW_NAME(pack)(V *buf, const DW_T *img, const dw_args *a,
                             long c0, long n, long top, long left, long wp) {
  for (long h = 0; h < a->H; ++h)
    for (long w = 0; w < a->W; ++w)
      memcpy(&buf[(h + top) * wp + w + left],
             img + (h * a->W + w) * a->C + c0, n * sizeof(DW_T));
}

DW_INLINE void DW_NAME(store)(DW_T *dst, V v, long n) {
  memcpy(dst, &v, n * sizeof(DW_T));
}

typedef DW_I DW_NAME(ivec) __attribute__((vector_size(DW_VBYTES)));
#define VI DW_NAME(ivec)

DW_INLINE V DW_NAME(select)(VI mask, V a, V b) {
  return (V)(((VI)a & mask) | ((VI)b & ~mask));
}

/* exp(x) for x <= 0 (Cephes' expf polynomial, 2^n from the exponent
 * bits); underflows to 0 below -87. */
DW_INLINE V DW_NAME(exp_neg)(V x) {
  const V lo = (V){0} - 87;
  const VI small = x < lo;
  x = DW_NAME(select)(small, lo, x);
  const VI n = __builtin_convertvector(x * (DW_T)1.44269504088896341 - (DW_T)0.5, VI);
  const V fn = __builtin_convertvector(n, V);
  const V r = x - fn * (DW_T)0.693359375 + fn * (DW_T)2.12194440e-4;
  V p = (V){0} + (DW_T)1.9875691500e-4;
  p = p * r + (DW_T)1.3981999507e-3;
  p = p * r + (DW_T)8.3334519073e-3;
  p = p * r + (DW_T)4.1665795894e-2;
  p = p * r + (DW_T)1.6666665459e-1;
  p = p * r + (DW_T)5.0000001201e-1;
  const V y = p * r * r + r + 1;
  const int shift = sizeof(DW_T) == 4 ? 23 : 52;
  const VI bias = (VI){0} + (sizeof(DW_T) == 4 ? 127 : 1023);
  const V scale = (V)((n + bias) << shift);
  return DW_NAME(select)(small, (V){0}, y * scale);
}

/* The exact GELU, x / 2 * (1 + erf(x / sqrt 2)), with the erf of
 * Abramowitz & Stegun (DW_T)7.1.26 (absolute error below (DW_T)1.5e-7), as torch's
 * vectorized CPU erf. */
DW_INLINE V DW_NAME(gelu)(V x) {
  const V z = x * (DW_T)0.70710678118654752;
  const V az = DW_NAME(select)(z < 0, -z, z);
  const V t = 1 / (1 + (DW_T)0.3275911 * az);
  V p = (V){0} + (DW_T)1.061405429;
  p = p * t - (DW_T)1.453152027;
  p = p * t + (DW_T)1.421413741;
  p = p * t - (DW_T)0.284496736;
  p = p * t + (DW_T)0.254829592;
  const V r = p * t * DW_NAME(exp_neg)(-az * az); /* 1 - erf(|z|) */
  return (DW_T)0.5 * x * DW_NAME(select)(z < 0, r, 2 - r);
}

/* The inference block's epilogue over one image's channel block:
 * out = x + scale * act(out), x read from the padded input. */
static void DW_NAME(block_epilogue)(const V *xp, DW_T *out,
                                    const dw_args *a, long c0, long n,
                                    long wp) {
  V s = {0};
  for (long l = 0; l < n; ++l) s[l] = ((const DW_T *)a->out_scale)[c0 + l];
  for (long h = 0; h < a->H; ++h)
    for (long w = 0; w < a->W; ++w) {
      DW_T *o = out + (h * a->W + w) * a->C;
      V v = {0};
      memcpy(&v, o, n * sizeof(DW_T));
      v = a->act == 2 ? DW_NAME(gelu)(v)
                      : DW_NAME(select)(v > 0, v, (V){0});
      DW_NAME(store)(o, xp[(h + a->pad_top) * wp + w + a->pad_left] + s * v,
                     n);
    }
}

/* xp = xp * scale + shift inside the image, the padding staying zero. */
static void DW_NAME(affine)(V *xp, const dw_args *a, long c0, long n,
                            long wp) {
  V s = {0}, t = {0};
  for (long l = 0; l < n; ++l) {
    s[l] = ((const DW_T *)a->in_scale)[c0 + l];
    t[l] = ((const DW_T *)a->in_shift)[c0 + l];
  }
  for (long h = 0; h < a->H; ++h)
    for (long w = 0; w < a->W; ++w) {
      V *v = &xp[(h + a->pad_top) * wp + w + a->pad_left];
      *v = *v * s + t;
    }
}

/* Outputs [ow, ow + NO) of row oh: out = bias + sum_{ki, kj} wk[ki, kj]
 * * xp[oh + ki, ow + kj]. A kernel row's weights stay in registers and
 * each input vector is loaded once per kernel row, for the up to K
 * accumulators it feeds (not once per tap). */
DW_INLINE void DW_NAME(fwd_pixels)(const V *xp, const V *wk, V bias,
                                   DW_T *out, const dw_args *a, long oh,
                                   long ow, long n, long wp, const int K,
                                   const int NO) {
  V acc[NO], wr[K];
#pragma GCC unroll 16
  for (int o = 0; o < NO; ++o) acc[o] = bias;
  for (int ki = 0; ki < K; ++ki) {
    const V *r = xp + (oh + ki) * wp + ow;
#pragma GCC unroll 16
    for (int kj = 0; kj < K; ++kj) wr[kj] = wk[ki * K + kj];
#pragma GCC unroll 32
    for (int j = 0; j < NO + K - 1; ++j) {
      const V x = r[j];
#pragma GCC unroll 16
      for (int o = 0; o < NO; ++o)
        if (j - o >= 0 && j - o < K) acc[o] += wr[j - o] * x;
    }
  }
  DW_T *dst = out + (oh * a->W + ow) * a->C;
  for (int o = 0; o < NO; ++o) DW_NAME(store)(dst + o * a->C, acc[o], n);
}

/* The forward over one image's channel block: eight outputs at a time,
 * then one at a time. */
DW_INLINE void DW_NAME(fwd_rows)(const V *xp, const V *wk, V bias, DW_T *out,
                                 const dw_args *a, long n, long wp,
                                 const int K) {
  for (long oh = 0; oh < a->H; ++oh) {
    long ow = 0;
    for (; ow + 8 <= a->W; ow += 8)
      DW_NAME(fwd_pixels)(xp, wk, bias, out, a, oh, ow, n, wp, K, 8);
    for (; ow < a->W; ++ow)
      DW_NAME(fwd_pixels)(xp, wk, bias, out, a, oh, ow, n, wp, K, 1);
  }
}

/* One image, one channel block of the forward convolution. */
static void DW_NAME(fwd_item)(const void *p, long item) {
  const dw_args *a = p;
  const long nblk = (a->C + VLEN - 1) / VLEN;
  const long b = item / nblk, c0 = item % nblk * VLEN;
  const long n = a->C - c0 < VLEN ? a->C - c0 : VLEN;
  const int K = a->K;
  const long hp = a->H + K - 1, wp = a->W + K - 1;
  const long plane = a->H * a->W * a->C;
  const DW_T *w = a->w;
  V *xp = aligned_alloc(64, hp * wp * sizeof(V));
  V wk[K * K], bias = {0};
  if (!xp) abort();
  memset(xp, 0, hp * wp * sizeof(V));
  DW_NAME(pack)(xp, (const DW_T *)a->in + b * plane, a, c0, n, a->pad_top,
                a->pad_left, wp);
  if (a->in_scale) DW_NAME(affine)(xp, a, c0, n, wp);
  memset(wk, 0, sizeof(wk));
  for (long l = 0; l < n; ++l) {
    const DW_T *wc = w + (c0 + l) * K * K;
    for (int k = 0; k < K * K; ++k) wk[k][l] = wc[k];
    if (a->bias) bias[l] = ((const DW_T *)a->bias)[c0 + l];
  }
  DW_T *out = (DW_T *)a->out + b * plane + c0;
  switch (K) {
    case 3: DW_NAME(fwd_rows)(xp, wk, bias, out, a, n, wp, 3); break;
    case 5: DW_NAME(fwd_rows)(xp, wk, bias, out, a, n, wp, 5); break;
    case 7: DW_NAME(fwd_rows)(xp, wk, bias, out, a, n, wp, 7); break;
    case 8: DW_NAME(fwd_rows)(xp, wk, bias, out, a, n, wp, 8); break;
    case 9: DW_NAME(fwd_rows)(xp, wk, bias, out, a, n, wp, 9); break;
    default: DW_NAME(fwd_rows)(xp, wk, bias, out, a, n, wp, K);
  }
  if (a->out_scale) DW_NAME(block_epilogue)(xp, out, a, c0, n, wp);
  free(xp);
}

/* gw[ki, kj] += sum_{oh, ow} gp[oh, ow] * xp[oh + ki, ow + kj]: for a fixed
 * ki, K accumulators live in registers and each gradient load feeds K
 * FMAs. */
DW_INLINE void DW_NAME(gw_rows)(const V *xp, const V *gp, V *gw, long H,
                                long W, long wp, const int K) {
  for (int ki = 0; ki < K; ++ki) {
    V acc[K];
    for (int kj = 0; kj < K; ++kj) acc[kj] = (V){0};
    for (long oh = 0; oh < H; ++oh) {
      const V *r = xp + (oh + ki) * wp;
      const V *g = gp + oh * W;
      for (long ow = 0; ow < W; ++ow) {
        const V gv = g[ow];
        for (int kj = 0; kj < K; ++kj) acc[kj] += gv * r[ow + kj];
      }
    }
    for (int kj = 0; kj < K; ++kj) gw[ki * K + kj] += acc[kj];
  }
}

/* One channel block of the weight gradient, summed over the batch. */
static void DW_NAME(gw_item)(const void *p, long item) {
  const dw_args *a = p;
  const long c0 = item * VLEN;
  const long n = a->C - c0 < VLEN ? a->C - c0 : VLEN;
  const int K = a->K;
  const long H = a->H, W = a->W, hp = H + K - 1, wp = W + K - 1;
  const long plane = H * W * a->C;
  V *xp = aligned_alloc(64, (hp * wp + H * W) * sizeof(V));
  V *gp = xp + hp * wp;
  V gw[K * K];
  if (!xp) abort();
  memset(xp, 0, (hp * wp + H * W) * sizeof(V));
  memset(gw, 0, sizeof(gw));
  for (long b = 0; b < a->B; ++b) {
    DW_NAME(pack)(xp, (const DW_T *)a->in + b * plane, a, c0, n, a->pad_top,
                  a->pad_left, wp);
    DW_NAME(pack)(gp, (const DW_T *)a->go + b * plane, a, c0, n, 0, 0, W);
    switch (K) {
      case 3: DW_NAME(gw_rows)(xp, gp, gw, H, W, wp, 3); break;
      case 5: DW_NAME(gw_rows)(xp, gp, gw, H, W, wp, 5); break;
      case 7: DW_NAME(gw_rows)(xp, gp, gw, H, W, wp, 7); break;
      case 8: DW_NAME(gw_rows)(xp, gp, gw, H, W, wp, 8); break;
      case 9: DW_NAME(gw_rows)(xp, gp, gw, H, W, wp, 9); break;
      default: DW_NAME(gw_rows)(xp, gp, gw, H, W, wp, K);
    }
  }
  for (long l = 0; l < n; ++l)
    for (int k = 0; k < K * K; ++k)
      ((DW_T *)a->out)[(c0 + l) * K * K + k] = gw[k][l];
  free(xp);
}

/* out = conv(in, w) + bias, bias may be NULL. */
void DW_NAME(dwconv_forward)(const DW_T *in, const DW_T *w, const DW_T *bias,
                             DW_T *out, long B, long H, long W, long C, int K,
                             int pad_top, int pad_left, int nthreads) {
  const dw_args a = {in, w, bias, NULL, out, B,      H,
                     W,  C, K,    pad_top, pad_left};
  dw_parallel_for(DW_NAME(fwd_item), &a, B * ((C + VLEN - 1) / VLEN),
                  nthreads);
}

/* One eval-mode ConvMixer residual branch and its sum, with the previous
 * BN applied on the way in: x = in * in_scale + in_shift (in_scale NULL:
 * x = in), out = x + out_scale * act(conv(x, w) + bias). */
void DW_NAME(dwconv_block)(const DW_T *in, const DW_T *in_scale,
                           const DW_T *in_shift, const DW_T *w,
                           const DW_T *bias, const DW_T *out_scale, int act,
                           DW_T *out, long B, long H, long W, long C, int K,
                           int pad_top, int pad_left, int nthreads) {
  const dw_args a = {in,       w,         bias,      NULL, out,
                     B,        H,         W,         C,    K,
                     pad_top,  pad_left,  in_scale,  in_shift,
                     out_scale, act};
  dw_parallel_for(DW_NAME(fwd_item), &a, B * ((C + VLEN - 1) / VLEN),
                  nthreads);
}

/* gw[c, ki, kj] = sum_{b, oh, ow} go[b, oh, ow, c]
 *                 * in[b, oh + ki - pad_top, ow + kj - pad_left, c]. */
void DW_NAME(dwconv_grad_weight)(const DW_T *go, const DW_T *in, DW_T *gw,
                                 long B, long H, long W, long C, int K,
                                 int pad_top, int pad_left, int nthreads) {
  const dw_args a = {in, NULL, NULL, go, gw, B,      H,
                     W,  C,    K,    pad_top, pad_left};
  dw_parallel_for(DW_NAME(gw_item), &a, (C + VLEN - 1) / VLEN, nthreads);
}

/* ---- Training: act -> BatchNorm (-> + residual), forward and backward ----
 *
 * ConvMixer follows every convolution with an activation and a training-mode
 * BatchNorm. These run over the N = B * H * W rows of C channels of NHWC
 * tensors in two streaming passes each way (aten takes four ops and about
 * eight passes, for the same arithmetic):
 *   forward   1: a = act(x), saved, and per-channel sums of a;
 *             2: y = a * s + t (+ res), s = gamma * rstd, t = beta - mean * s;
 *   backward  1: per-channel sums of g and g * (a - mean);
 *             2: gx = act'(x) * (A * g + Bc * a + D).
 * The rows are cut into blocks whose size depends on N alone; each block sums
 * into its own slot of `part` and the slots are added in order, so results
 * do not depend on the thread count. Sums run in DW_T within a block and in
 * double across blocks, shifted by the first row's value (the "shifted data"
 * variance, robust when the mean is large against the spread). */
typedef struct {
  const DW_T *x, *res, *go, *a_in, *shift, *s, *t, *d;
  DW_T *a, *y, *gx;
  double *part; /* (blocks, 2, C) */
  long N, C, rows;
  int act;
} DW_NAME(ab_args);

/* Loads and stores n <= VLEN values; whole vectors without a call. */
DW_INLINE V DW_NAME(load)(const DW_T *p, long n) {
  V v = {0};
  if (n == VLEN)
    memcpy(&v, p, sizeof(V));
  else
    memcpy(&v, p, n * sizeof(DW_T));
  return v;
}

DW_INLINE void DW_NAME(ab_store)(DW_T *p, V v, long n) {
  if (n == VLEN)
    memcpy(p, &v, sizeof(V));
  else
    memcpy(p, &v, n * sizeof(DW_T));
}

/* act'(x): 1 = ReLU (x > 0), 2 = exact GELU, Phi(x) + x * phi(x), with the
 * erf of DW_NAME(gelu). */
DW_INLINE V DW_NAME(act_grad)(V x, int act) {
  if (act == 1) return DW_NAME(select)(x > 0, (V){0} + 1, (V){0});
  const V z = x * (DW_T)0.70710678118654752;
  const V az = DW_NAME(select)(z < 0, -z, z);
  const V t = 1 / (1 + (DW_T)0.3275911 * az);
  V p = (V){0} + (DW_T)1.061405429;
  p = p * t - (DW_T)1.453152027;
  p = p * t + (DW_T)1.421413741;
  p = p * t - (DW_T)0.284496736;
  p = p * t + (DW_T)0.254829592;
  const V e = DW_NAME(exp_neg)(-az * az);
  const V r = (DW_T)0.5 * p * t * e; /* (1 - erf(|z|)) / 2 */
  const V cdf = DW_NAME(select)(z < 0, r, 1 - r);
  return cdf + x * e * (DW_T)0.39894228040143268;
}

DW_INLINE V DW_NAME(act)(V x, int act) {
  return act == 2 ? DW_NAME(gelu)(x) : DW_NAME(select)(x > 0, x, (V){0});
}

/* Adds a block's DW_T sums into its double slot. */
static void DW_NAME(ab_flush)(double *slot, const V *acc, long C) {
  for (long c = 0; c < C; ++c) slot[c] += (double)acc[c / VLEN][c % VLEN];
}

/* Forward pass 1 over one block of rows: a = act(x); sums of a - shift and
 * of its square, row by row (streaming), in 2 * C / VLEN vector
 * accumulators. */
static void DW_NAME(ab_fwd_stats)(const void *p, long item) {
  const DW_NAME(ab_args) *g = p;
  const long C = g->C, nv = (C + VLEN - 1) / VLEN, r0 = item * g->rows;
  const long r1 = r0 + g->rows < g->N ? r0 + g->rows : g->N;
  double *s1 = g->part + item * 2 * C, *s2 = s1 + C;
  V *acc1 = aligned_alloc(64, 2 * nv * sizeof(V)), *acc2 = acc1 + nv;
  if (!acc1) abort();
  memset(acc1, 0, 2 * nv * sizeof(V));
  for (long r = r0; r < r1; ++r)
    for (long c = 0; c < C; c += VLEN) {
      const long n = C - c < VLEN ? C - c : VLEN;
      const V v = DW_NAME(act)(DW_NAME(load)(g->x + r * C + c, n), g->act);
      DW_NAME(ab_store)(g->a + r * C + c, v, n);
      const V d = v - DW_NAME(load)(g->shift + c, n);
      acc1[c / VLEN] += d;
      acc2[c / VLEN] += d * d;
    }
  memset(s1, 0, 2 * C * sizeof(double));
  DW_NAME(ab_flush)(s1, acc1, C);
  DW_NAME(ab_flush)(s2, acc2, C);
  free(acc1);
}

/* Forward pass 2: y = a * s + t (+ res). */
static void DW_NAME(ab_fwd_norm)(const void *p, long item) {
  const DW_NAME(ab_args) *g = p;
  const long C = g->C, r0 = item * g->rows;
  const long r1 = r0 + g->rows < g->N ? r0 + g->rows : g->N;
  for (long r = r0; r < r1; ++r)
    for (long c = 0; c < C; c += VLEN) {
      const long n = C - c < VLEN ? C - c : VLEN;
      V v = DW_NAME(load)(g->a + r * C + c, n) * DW_NAME(load)(g->s + c, n) +
            DW_NAME(load)(g->t + c, n);
      if (g->res) v += DW_NAME(load)(g->res + r * C + c, n);
      DW_NAME(ab_store)(g->y + r * C + c, v, n);
    }
}

/* Backward pass 1: sums of g and of g * (a - mean) (shift = mean). */
static void DW_NAME(ab_bwd_stats)(const void *p, long item) {
  const DW_NAME(ab_args) *g = p;
  const long C = g->C, nv = (C + VLEN - 1) / VLEN, r0 = item * g->rows;
  const long r1 = r0 + g->rows < g->N ? r0 + g->rows : g->N;
  double *s1 = g->part + item * 2 * C, *s2 = s1 + C;
  V *acc1 = aligned_alloc(64, 2 * nv * sizeof(V)), *acc2 = acc1 + nv;
  if (!acc1) abort();
  memset(acc1, 0, 2 * nv * sizeof(V));
  for (long r = r0; r < r1; ++r)
    for (long c = 0; c < C; c += VLEN) {
      const long n = C - c < VLEN ? C - c : VLEN;
      const V gv = DW_NAME(load)(g->go + r * C + c, n);
      acc1[c / VLEN] += gv;
      acc2[c / VLEN] += gv * (DW_NAME(load)(g->a_in + r * C + c, n) -
                              DW_NAME(load)(g->shift + c, n));
    }
  memset(s1, 0, 2 * C * sizeof(double));
  DW_NAME(ab_flush)(s1, acc1, C);
  DW_NAME(ab_flush)(s2, acc2, C);
  free(acc1);
}

/* Backward pass 2: gx = act'(x) * (s * g + t * a + d). */
static void DW_NAME(ab_bwd_input)(const void *p, long item) {
  const DW_NAME(ab_args) *g = p;
  const long C = g->C, r0 = item * g->rows;
  const long r1 = r0 + g->rows < g->N ? r0 + g->rows : g->N;
  for (long r = r0; r < r1; ++r)
    for (long c = 0; c < C; c += VLEN) {
      const long n = C - c < VLEN ? C - c : VLEN;
      const V v = DW_NAME(load)(g->go + r * C + c, n) *
                      DW_NAME(load)(g->s + c, n) +
                  DW_NAME(load)(g->a_in + r * C + c, n) *
                      DW_NAME(load)(g->t + c, n) +
                  DW_NAME(load)(g->d + c, n);
      const V dx = DW_NAME(act_grad)(DW_NAME(load)(g->x + r * C + c, n), g->act);
      DW_NAME(ab_store)(g->gx + r * C + c, v * dx, n);
    }
}

/* The row blocks: about 64 of them, of at least 16 rows. */
static long DW_NAME(ab_rows)(long N) {
  const long rows = (N + 63) / 64;
  return rows < 16 ? 16 : rows;
}

/* Adds the blocks' slots: out1[c], out2[c] = the sums over all rows. */
static void DW_NAME(ab_reduce)(const double *part, long blocks, long C,
                               double *out1, double *out2) {
  for (long c = 0; c < C; ++c) out1[c] = out2[c] = 0;
  for (long b = 0; b < blocks; ++b)
    for (long c = 0; c < C; ++c) {
      out1[c] += part[b * 2 * C + c];
      out2[c] += part[b * 2 * C + C + c];
    }
}

/* Training-mode res + BN(act(x)) over (N, C) rows, act 1 = ReLU, 2 = GELU.
 * Writes a = act(x), y, and the batch mean and biased variance (C). res
 * may be NULL. */
int DW_NAME(act_bn_forward)(const DW_T *x, const DW_T *res,
                            const DW_T *gamma, const DW_T *beta, double eps,
                            int act, DW_T *a, DW_T *y, DW_T *mean, DW_T *var,
                            long N, long C, int nthreads) {
  const long rows = DW_NAME(ab_rows)(N), blocks = (N + rows - 1) / rows;
  double *part = malloc((blocks * 2 + 2) * C * sizeof(double));
  DW_T *shift = malloc(3 * C * sizeof(DW_T));
  if (!part || !shift) {
    free(part);
    free(shift);
    return 1;
  }
  DW_T *s = shift + C, *t = s + C;
  double *s1 = part + blocks * 2 * C, *s2 = s1 + C;
  for (long c = 0; c < C; c += VLEN) {
    const long n = C - c < VLEN ? C - c : VLEN;
    DW_NAME(ab_store)(shift + c, DW_NAME(act)(DW_NAME(load)(x + c, n), act), n);
  }
  DW_NAME(ab_args) g = {x, res, NULL, NULL, shift, s, t, NULL, a, y, NULL,
                        part, N, C, rows, act};
  dw_parallel_for(DW_NAME(ab_fwd_stats), &g, blocks, nthreads);
  DW_NAME(ab_reduce)(part, blocks, C, s1, s2);
  for (long c = 0; c < C; ++c) {
    const double d = s1[c] / N, v = s2[c] / N - d * d;
    const double m = shift[c] + d, vv = v > 0 ? v : 0;
    const double sc = (gamma ? gamma[c] : 1) / __builtin_sqrt(vv + eps);
    mean[c] = (DW_T)m;
    var[c] = (DW_T)vv;
    s[c] = (DW_T)sc;
    t[c] = (DW_T)((beta ? beta[c] : 0) - m * sc);
  }
  dw_parallel_for(DW_NAME(ab_fwd_norm), &g, blocks, nthreads);
  free(part);
  free(shift);
  return 0;
}

/* The gradients of DW_NAME(act_bn_forward) given go = dL/dy: gx, and the
 * weight and bias gradients gw, gb (C) (the residual's is go itself). x is
 * read only for GELU; for ReLU pass a. */
int DW_NAME(act_bn_backward)(const DW_T *go, const DW_T *x, const DW_T *a,
                             const DW_T *mean, const DW_T *var,
                             const DW_T *gamma, double eps, int act,
                             DW_T *gx, DW_T *gw, DW_T *gb, long N, long C,
                             int nthreads) {
  const long rows = DW_NAME(ab_rows)(N), blocks = (N + rows - 1) / rows;
  double *part = malloc((blocks * 2 + 2) * C * sizeof(double));
  DW_T *s = malloc(3 * C * sizeof(DW_T));
  if (!part || !s) {
    free(part);
    free(s);
    return 1;
  }
  DW_T *t = s + C, *d = t + C;
  double *s1 = part + blocks * 2 * C, *s2 = s1 + C;
  DW_NAME(ab_args) g = {x, NULL, go, a, mean, s, t, d, NULL, NULL, gx,
                        part, N, C, rows, act};
  dw_parallel_for(DW_NAME(ab_bwd_stats), &g, blocks, nthreads);
  DW_NAME(ab_reduce)(part, blocks, C, s1, s2);
  for (long c = 0; c < C; ++c) {
    /* dL/da = A (g - mean(g)) - A rstd^2 (a - mean) mean(g (a - mean)),
     * A = gamma * rstd. */
    const double rstd = 1 / __builtin_sqrt((double)var[c] + eps);
    const double A = (gamma ? gamma[c] : 1) * rstd;
    const double Bc = -A * rstd * rstd * s2[c] / N;
    s[c] = (DW_T)A;
    t[c] = (DW_T)Bc;
    d[c] = (DW_T)(-A * s1[c] / N - Bc * mean[c]);
    if (gw) gw[c] = (DW_T)(s2[c] * rstd);
    if (gb) gb[c] = (DW_T)s1[c];
  }
  dw_parallel_for(DW_NAME(ab_bwd_input), &g, blocks, nthreads);
  free(part);
  free(s);
  return 0;
}

#undef V
#undef VI
#undef VLEN
#endif
