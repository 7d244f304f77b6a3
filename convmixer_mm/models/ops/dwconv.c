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

/* Runs fn(args, i) for every i < n on up to nthreads threads. */
static void dw_parallel_for(dw_item_fn fn, const void *args, long n,
                            int nthreads) {
  dw_task task = {fn, args, n, 0};
  if (nthreads > n) nthreads = (int)n;
  if (nthreads < 1) nthreads = 1;
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

/* out[oh, ow] = bias + sum_{ki, kj} wk[ki, kj] * xp[oh + ki, ow + kj];
 * four outputs at a time share each weight load. */
DW_INLINE void DW_NAME(fwd_rows)(const V *xp, const V *wk, V bias, DW_T *out,
                                 const dw_args *a, long n, long wp,
                                 const int K) {
  const long W = a->W, C = a->C;
  for (long oh = 0; oh < a->H; ++oh) {
    DW_T *orow = out + oh * W * C;
    long ow = 0;
    for (; ow + 4 <= W; ow += 4) {
      V a0 = bias, a1 = bias, a2 = bias, a3 = bias;
      for (int ki = 0; ki < K; ++ki) {
        const V *r = xp + (oh + ki) * wp + ow;
        const V *wr = wk + ki * K;
        for (int kj = 0; kj < K; ++kj) {
          const V w = wr[kj];
          a0 += w * r[kj];
          a1 += w * r[kj + 1];
          a2 += w * r[kj + 2];
          a3 += w * r[kj + 3];
        }
      }
      DW_NAME(store)(orow + (ow + 0) * C, a0, n);
      DW_NAME(store)(orow + (ow + 1) * C, a1, n);
      DW_NAME(store)(orow + (ow + 2) * C, a2, n);
      DW_NAME(store)(orow + (ow + 3) * C, a3, n);
    }
    for (; ow < W; ++ow) {
      V a0 = bias;
      for (int ki = 0; ki < K; ++ki)
        for (int kj = 0; kj < K; ++kj)
          a0 += wk[ki * K + kj] * xp[(oh + ki) * wp + ow + kj];
      DW_NAME(store)(orow + ow * C, a0, n);
    }
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

#undef V
#undef VI
#undef VLEN
#endif
