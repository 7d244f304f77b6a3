/* Depthwise 2-D convolution over NHWC (channels_last) tensors: stride 1,
 * zero padding, output as large as the input ('same').
 *
 * Plain C with GCC vector extensions (gcc and clang), no torch headers, so
 * that it compiles in seconds; convmixer_mm/models/ops/dwconv.py builds it
 * at first use and calls it through ctypes.
 *
 * Every task copies one block of VLEN channels of one image into a small
 * zero-padded buffer (pixel-major, one vector per pixel; the inference
 * block, a ring of rows): the kernels then run without bounds checks on
 * L1/L2-resident, aligned data, instead of striding C floats between
 * pixels. Channels past C stay zero.
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
   * x + out_scale * act(conv(x) + bias), act 1 = ReLU, 2 = exact GELU.
   * With bf16 set, in and out hold bfloat16 (the rest stays DW_T). */
  const void *in_scale, *in_shift, *out_scale;
  int act, bf16;
  long group; /* channel blocks per task */
} dw_args;

#define DW_T float
#define DW_I int
#define DW_NAME(name) name##_f32
#define DW_BLOCK /* the inference block kernel: float only */
#include __FILE__
#undef DW_T
#undef DW_I
#undef DW_NAME
#undef DW_BLOCK
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

/* Loads and stores n <= VLEN values: a whole vector is one vector move
 * (a constant size), a partial one a libc call. */
DW_INLINE V DW_NAME(load)(const DW_T *p, long n) {
  V v = {0};
  if (n == VLEN)
    memcpy(&v, p, sizeof(V));
  else
    memcpy(&v, p, n * sizeof(DW_T));
  return v;
}

DW_INLINE void DW_NAME(store)(DW_T *dst, V v, long n) {
  if (n == VLEN)
    memcpy(dst, &v, sizeof(V));
  else
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
  const VI n =
      __builtin_convertvector(x * (DW_T)1.44269504088896341 - (DW_T)0.5, VI);
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

/* erf(z) to float precision: for |z| <= 4, Eigen's float rational
 * approximation z P(z^2) / Q(z^2) (absolute error below 4e-7), and +-1
 * beyond, as in float. Half the instructions of an erf through exp. */
DW_INLINE V DW_NAME(erf)(V z) {
  z = DW_NAME(select)(z > 4, (V){0} + 4, z);
  z = DW_NAME(select)(z < -4, (V){0} - 4, z);
  const V z2 = z * z;
  V p = (V){0} + (DW_T)-2.72614225801306e-10;
  p = p * z2 + (DW_T)2.77068142495902e-08;
  p = p * z2 + (DW_T)-2.10102402082508e-06;
  p = p * z2 + (DW_T)-5.69250639462346e-05;
  p = p * z2 + (DW_T)-7.34990630326855e-04;
  p = p * z2 + (DW_T)-2.95459980854025e-03;
  p = p * z2 + (DW_T)-1.60960333262415e-02;
  V q = (V){0} + (DW_T)-1.45660718464996e-05;
  q = q * z2 + (DW_T)-2.13374055278905e-04;
  q = q * z2 + (DW_T)-1.68282697438203e-03;
  q = q * z2 + (DW_T)-7.37332916720468e-03;
  q = q * z2 + (DW_T)-1.42647390514189e-02;
  return z * p / q;
}

/* The exact GELU, x / 2 * (1 + erf(x / sqrt 2)). */
DW_INLINE V DW_NAME(gelu)(V x) {
  const V half = (DW_T)0.5 * x;
  return half + half * DW_NAME(erf)(x * (DW_T)0.70710678118654752);
}

/* bfloat16 is the top half of a float: widening is exact, and narrowing
 * rounds to nearest even (NaN stays NaN), as torch does. */
typedef unsigned short DW_NAME(bf16vec)
    __attribute__((vector_size(VLEN * 2)));
typedef unsigned DW_NAME(u32vec) __attribute__((vector_size(VLEN * 4)));
typedef float DW_NAME(f32vec) __attribute__((vector_size(VLEN * 4)));

DW_INLINE V DW_NAME(from_bf16)(DW_NAME(bf16vec) h) {
  const DW_NAME(u32vec) u = __builtin_convertvector(h, DW_NAME(u32vec)) << 16;
  return __builtin_convertvector((DW_NAME(f32vec))u, V);
}

DW_INLINE DW_NAME(bf16vec) DW_NAME(to_bf16)(V v) {
  const DW_NAME(f32vec) f = __builtin_convertvector(v, DW_NAME(f32vec));
  DW_NAME(u32vec) u = (DW_NAME(u32vec))f;
  u = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
  u = (u & (DW_NAME(u32vec))(f == f)) | (0x7fc0 & ~(DW_NAME(u32vec))(f == f));
  return __builtin_convertvector(u, DW_NAME(bf16vec));
}

/* Channels [0, n) of the pixel at element i of p, DW_T or bfloat16: a full
 * block is one vector access, not a call to libc's memcpy. */
DW_INLINE V DW_NAME(block_load)(const void *p, long i, long n, int bf16) {
  if (!bf16) return DW_NAME(load)((const DW_T *)p + i, n);
  DW_NAME(bf16vec) h = {0};
  if (n == VLEN)
    memcpy(&h, (const unsigned short *)p + i, sizeof(h));
  else
    memcpy(&h, (const unsigned short *)p + i, n * sizeof(short));
  return DW_NAME(from_bf16)(h);
}

DW_INLINE void DW_NAME(block_store)(void *p, long i, V v, long n,
                                    int bf16) {
  if (!bf16) return DW_NAME(store)((DW_T *)p + i, v, n);
  const DW_NAME(bf16vec) h = DW_NAME(to_bf16)(v);
  if (n == VLEN)
    memcpy((unsigned short *)p + i, &h, sizeof(h));
  else
    memcpy((unsigned short *)p + i, &h, n * sizeof(short));
}

/* act(x), 1 = ReLU, 2 = exact GELU. */
DW_INLINE V DW_NAME(act)(V x, int act) {
  return act == 2 ? DW_NAME(gelu)(x) : DW_NAME(select)(x > 0, x, (V){0});
}

/* acc[i] = bias + sum_{k0 <= ki < k1, kj} wk[ki, kj] * row[ki][ow + i + kj]
 * for i < NO, the rows outside [k0, k1) and the inputs j = i + kj outside
 * [jlo, jhi) being known zeros (padding) and skipped. A kernel row's
 * weights stay in registers, and each input vector is loaded once per
 * kernel row for the up to K accumulators it feeds (not once per tap). */
DW_INLINE void DW_NAME(conv_pixels)(const V *const *row, long ow,
                                    const V *wk, V bias, int k0, int k1,
                                    const int K, const int NO, const int jlo,
                                    const int jhi, V *acc) {
  V wr[K];
#pragma GCC unroll 16
  for (int i = 0; i < NO; ++i) acc[i] = bias;
  for (int ki = k0; ki < k1; ++ki) {
    const V *r = row[ki] + ow;
    /* One base register for the inputs at constant offsets: left alone,
     * GCC keeps a register per input offset (ow + j), then spills. */
    __asm__("" : "+r"(r));
#pragma GCC unroll 16
    for (int kj = 0; kj < K; ++kj) wr[kj] = wk[ki * K + kj];
#pragma GCC unroll 32
    for (int j = jlo; j < jhi; ++j) {
      const V x = r[j];
#pragma GCC unroll 16
      for (int i = 0; i < NO; ++i)
        if (j - i >= 0 && j - i < K) acc[i] += wr[j - i] * x;
    }
  }
}

#ifdef DW_BLOCK
/* The inference block over one image's channel block [c0, c0 + n). Its
 * input, mapped by in * s + t, is packed one row at a time, as the output
 * rows need it, into a ring of K rows of W + K - 1 vectors (the pixels
 * between zero borders): L1-resident, aligned, without bounds checks,
 * instead of C floats apart. The kernel rows and columns that fall in the
 * zero padding are skipped. */
typedef struct {
  const dw_args *a;
  const V *wk;
  V bias, os, s, t;
  long b, c0, n;
  int next; /* a next channel block follows in this task */
} DW_NAME(blk);

/* The address of pixel (h, w) of the block in p (in or out). */
DW_INLINE const char *DW_NAME(block_at)(const void *p,
                                        const DW_NAME(blk) *k, long c0,
                                        long h, long w) {
  const dw_args *a = k->a;
  return (const char *)p + (((k->b * a->H + h) * a->W + w) * a->C + c0) *
                               (a->bf16 ? 2 : sizeof(DW_T));
}

/* Image row h of the block into dst. With next set, asks for the same row
 * of the next channel block too, so that packing that block reads from L2
 * rather than waiting on one lone cache line per pixel. */
DW_INLINE void DW_NAME(block_pack_row)(V *dst, const DW_NAME(blk) *k,
                                       long h) {
  const dw_args *a = k->a;
  const long i0 = (k->b * a->H + h) * a->W * a->C + k->c0;
  for (long w = 0; w < a->W; ++w)
    dst[w] = DW_NAME(block_load)(a->in, i0 + w * a->C, k->n, a->bf16) *
                 k->s + k->t;
  for (long w = 0; k->next && w < a->W; ++w)
    __builtin_prefetch(DW_NAME(block_at)(a->in, k, k->c0 + VLEN, h, w), 0,
                       2);
}

/* out[o + i * C] = x[i] + os * act(acc[i]) for i < no: one copy for every
 * tile shape. Meanwhile it asks for the same pixels of the next row to
 * pack (pin) and of the next output row (pout), where not NULL: cache lines
 * of their own, which the hardware prefetchers do not foresee; asked for
 * one by one between the activations, they do not flood the miss queue. */
static void DW_NAME(block_out)(const DW_NAME(blk) *k, V *acc, const V *x,
                               long o, int no, const char *pin,
                               const char *pout) {
  const dw_args *a = k->a;
  const long stride = a->C * (a->bf16 ? 2 : sizeof(DW_T));
  for (int i = 0; i < no; ++i) {
    if (pin) __builtin_prefetch(pin + i * stride, 0, 3);
    if (pout) __builtin_prefetch(pout + i * stride, 1, 3);
    acc[i] = x[i] + k->os * DW_NAME(act)(acc[i], a->act);
  }
  if (!a->bf16 && k->n == VLEN)
    for (int i = 0; i < no; ++i)
      DW_NAME(store)((DW_T *)a->out + o + i * a->C, acc[i], VLEN);
  else
    for (int i = 0; i < no; ++i)
      DW_NAME(block_store)(a->out, o + i * a->C, acc[i], k->n, a->bf16);
}

/* Outputs [ow, ow + NO) of row oh: x + os * act(bias + conv(x)), x the
 * mapped input (the ring's centre row). L / R: the tile starts / ends at
 * the image's border, so that its first / last inputs are padding. */
DW_INLINE void DW_NAME(block_tile)(const V *const *row,
                                   const DW_NAME(blk) *k, long oh, long ow,
                                   long next_in, int k0, int k1, const int K,
                                   const int NO, const int L, const int R) {
  const dw_args *a = k->a;
  const int P = (K - 1) / 2;
  V acc[NO];
  DW_NAME(conv_pixels)(row, ow, k->wk, k->bias, k0, k1, K, NO, L ? P : 0,
                       R ? NO + P : NO + K - 1, acc);
  DW_NAME(block_out)(
      k, acc, row[P] + ow + P,
      ((k->b * a->H + oh) * a->W + ow) * a->C + k->c0, NO,
      next_in < a->H ? DW_NAME(block_at)(a->in, k, k->c0, next_in, ow) : 0,
      oh + 1 < a->H ? DW_NAME(block_at)(a->out, k, k->c0, oh + 1, ow) : 0);
}

/* The block over its image, row by row; with wide set (a kernel size
 * known at compile time), 16 or 8 outputs at a time, else one. */
DW_INLINE void DW_NAME(block_rows)(V *ring, const DW_NAME(blk) *k,
                                   const int K, const int wide) {
  const dw_args *a = k->a;
  const int P = (K - 1) / 2;
  const long H = a->H, W = a->W, wp = W + K - 1;
  const V *row[K];
  long packed = 0;
  for (long oh = 0; oh < H; ++oh) {
    /* Image row ih lives in slot ih % K of the ring. */
    for (; packed < H && packed <= oh + K - 1 - P; ++packed)
      DW_NAME(block_pack_row)(ring + packed % K * wp + P, k, packed);
    for (int ki = 0; ki < K; ++ki) row[ki] = ring + (oh + ki - P + K) % K * wp;
    const int k0 = oh < P ? P - oh : 0;
    const int k1 = H + P - oh < K ? H + P - oh : K;
    long ow = 0;
    for (; wide && ow + 16 <= W; ow += 16) {
      const int L = ow == 0, R = ow + 16 == W;
      if (L && R)
        DW_NAME(block_tile)(row, k, oh, ow, packed, k0, k1, K, 16, 1, 1);
      else if (L)
        DW_NAME(block_tile)(row, k, oh, ow, packed, k0, k1, K, 16, 1, 0);
      else if (R)
        DW_NAME(block_tile)(row, k, oh, ow, packed, k0, k1, K, 16, 0, 1);
      else
        DW_NAME(block_tile)(row, k, oh, ow, packed, k0, k1, K, 16, 0, 0);
    }
    for (; wide && ow + 8 <= W; ow += 8)
      DW_NAME(block_tile)(row, k, oh, ow, packed, k0, k1, K, 8, 0, 0);
    for (; ow < W; ++ow)
      DW_NAME(block_tile)(row, k, oh, ow, packed, k0, k1, K, 1, 0, 0);
  }
}

/* One image, a->group channel blocks (fewer at the end) of the inference
 * block, one after the other. */
static void DW_NAME(block_item)(const void *p, long item) {
  const dw_args *a = p;
  const long nblk = (a->C + VLEN - 1) / VLEN;
  const long ngroup = (nblk + a->group - 1) / a->group;
  const long b = item / ngroup, blk0 = item % ngroup * a->group;
  const long nb = nblk - blk0 < a->group ? nblk - blk0 : a->group;
  const int K = a->K;
  const long ring_size = K * (a->W + K - 1) * sizeof(V);
  V *ring = aligned_alloc(64, ring_size);
  if (!ring) abort();
  memset(ring, 0, ring_size);
  for (long blk = blk0; blk < blk0 + nb; ++blk) {
    const long c0 = blk * VLEN;
    const long n = a->C - c0 < VLEN ? a->C - c0 : VLEN;
    V wk[K * K];
    DW_NAME(blk) k = {a, wk, {0}, {0}, {0}, {0}, b, c0, n,
                      blk + 1 < blk0 + nb};
    for (int i = 0; i < K * K; ++i)
      wk[i] = DW_NAME(block_load)(a->w, i * a->C + c0, n, 0);
    for (long l = 0; l < n; ++l) {
      k.bias[l] = ((const DW_T *)a->bias)[c0 + l];
      k.os[l] = ((const DW_T *)a->out_scale)[c0 + l];
      k.s[l] = a->in_scale ? ((const DW_T *)a->in_scale)[c0 + l] : 1;
      if (a->in_shift) k.t[l] = ((const DW_T *)a->in_shift)[c0 + l];
    }
    switch (K) {
      case 3: DW_NAME(block_rows)(ring, &k, 3, 1); break;
      case 5: DW_NAME(block_rows)(ring, &k, 5, 1); break;
      case 7: DW_NAME(block_rows)(ring, &k, 7, 1); break;
      case 9: DW_NAME(block_rows)(ring, &k, 9, 1); break;
      default: DW_NAME(block_rows)(ring, &k, K, 0);
    }
  }
  free(ring);
}
#endif

/* Outputs [ow, ow + NO) of row oh: out = bias + sum_{ki, kj} wk[ki, kj]
 * * xp[oh + ki, ow + kj], without the kernel rows outside [k0, k1). */
DW_INLINE void DW_NAME(fwd_pixels)(const V *const *row, const V *wk,
                                   V bias, DW_T *out, const dw_args *a,
                                   long oh, long ow, long n, int k0, int k1,
                                   const int K, const int NO) {
  V acc[NO];
  DW_NAME(conv_pixels)(row, ow, wk, bias, k0, k1, K, NO, 0, NO + K - 1,
                       acc);
  DW_T *dst = out + (oh * a->W + ow) * a->C;
  for (int o = 0; o < NO; ++o) DW_NAME(store)(dst + o * a->C, acc[o], n);
}

/* The forward over one image's channel block: eight outputs at a time,
 * then one at a time, skipping the kernel rows in the zero padding. */
DW_INLINE void DW_NAME(fwd_rows)(const V *xp, const V *wk, V bias, DW_T *out,
                                 const dw_args *a, long n, long wp,
                                 const int K) {
  const V *row[K];
  for (long oh = 0; oh < a->H; ++oh) {
    for (int ki = 0; ki < K; ++ki) row[ki] = xp + (oh + ki) * wp;
    const int k0 = oh < a->pad_top ? a->pad_top - oh : 0;
    const int k1 = a->H + a->pad_top - oh < K ? a->H + a->pad_top - oh : K;
    long ow = 0;
    for (; ow + 8 <= a->W; ow += 8)
      DW_NAME(fwd_pixels)(row, wk, bias, out, a, oh, ow, n, k0, k1, K, 8);
    for (; ow < a->W; ++ow)
      DW_NAME(fwd_pixels)(row, wk, bias, out, a, oh, ow, n, k0, k1, K, 1);
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

#ifdef DW_BLOCK
/* One eval-mode ConvMixer residual branch and its sum, with the previous
 * BN applied on the way in: x = in * in_scale + in_shift (in_scale NULL:
 * x = in), out = x + out_scale * act(conv(x, w) + bias), zero padding
 * (K - 1) / 2 on the top and left, the rest after. in and out are DW_T,
 * or bfloat16 if bf16 (computed in DW_T). out may be in: a task reads
 * each input row of its channels into its ring before it writes that row
 * of the output. w is tap-major, (K, K, C), so that a tap's weights for a
 * channel block are one vector load. */
void DW_NAME(dwconv_block)(const void *in, const DW_T *in_scale,
                           const DW_T *in_shift, const DW_T *w,
                           const DW_T *bias, const DW_T *out_scale, int act,
                           void *out, long B, long H, long W, long C, int K,
                           int bf16, int nthreads) {
  /* Up to four channel blocks per task, while there are four tasks per
   * thread. */
  const long nblk = (C + VLEN - 1) / VLEN;
  long group = 4;
  while (group > 1 && B * ((nblk + group - 1) / group) < 4 * nthreads)
    group /= 2;
  const dw_args a = {in,       w,         bias,      NULL, out,
                     B,        H,         W,         C,    K,
                     0,        0,         in_scale,  in_shift,
                     out_scale, act,      bf16,      group};
  dw_parallel_for(DW_NAME(block_item), &a, B * ((nblk + group - 1) / group),
                  nthreads);
}
#endif

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
 * tensors in two streaming passes each way, recomputing a = act(x) rather
 * than storing it (these passes are bound by memory traffic; aten takes four
 * ops, about eight passes, and keeps a):
 *   forward   1: per-channel sums of a;
 *             2: y = a * s + t (+ res), s = gamma * rstd, t = beta - mean * s;
 *   backward  1: per-channel sums of g and g * (a - mean);
 *             2: gx = act'(x) * (A * g + Bc * a + D).
 * The rows are cut into blocks whose size depends on N alone; each block sums
 * into its own slot of `part` and the slots are added in order, so results
 * do not depend on the thread count. Sums run in DW_T within a block and in
 * double across blocks, shifted by the first row's value (the "shifted data"
 * variance, robust when the mean is large against the spread). */
typedef struct {
  const DW_T *x, *res, *go, *shift, *s, *t, *d;
  DW_T *y, *gx;
  double *part; /* (blocks, 2, C) */
  long N, C, rows;
  int act;
} DW_NAME(ab_args);

/* act(x) and act'(x) together; GELU's is Phi(x) + x * phi(x). */
DW_INLINE V DW_NAME(act_and_grad)(V x, int act, V *grad) {
  if (act == 1) {
    const VI pos = x > 0;
    *grad = DW_NAME(select)(pos, (V){0} + 1, (V){0});
    return DW_NAME(select)(pos, x, (V){0});
  }
  const V z = x * (DW_T)0.70710678118654752;
  const V cdf = (DW_T)0.5 + (DW_T)0.5 * DW_NAME(erf)(z);
  *grad = cdf + x * DW_NAME(exp_neg)(-z * z) * (DW_T)0.39894228040143268;
  return x * cdf;
}

/* Adds a block's DW_T sums into its double slot. */
static void DW_NAME(ab_flush)(double *slot, const V *acc, long C) {
  for (long c = 0; c < C; ++c) slot[c] += (double)acc[c / VLEN][c % VLEN];
}

/* Pass 1, either way, over one block of rows, row by row (streaming), into
 * 2 * C / VLEN vector accumulators: forward (go NULL), the sums of
 * a - shift and of its square; backward, of g and of g * (a - shift). */
static void DW_NAME(ab_stats)(const void *p, long item) {
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
      const V d = DW_NAME(act)(DW_NAME(load)(g->x + r * C + c, n), g->act) -
                  DW_NAME(load)(g->shift + c, n);
      const V w = g->go ? DW_NAME(load)(g->go + r * C + c, n) : d;
      acc1[c / VLEN] += w;
      acc2[c / VLEN] += w * d;
    }
  memset(s1, 0, 2 * C * sizeof(double));
  DW_NAME(ab_flush)(s1, acc1, C);
  DW_NAME(ab_flush)(s2, acc2, C);
  free(acc1);
}

/* Forward pass 2: y = act(x) * s + t (+ res). */
static void DW_NAME(ab_fwd_norm)(const void *p, long item) {
  const DW_NAME(ab_args) *g = p;
  const long C = g->C, r0 = item * g->rows;
  const long r1 = r0 + g->rows < g->N ? r0 + g->rows : g->N;
  for (long r = r0; r < r1; ++r)
    for (long c = 0; c < C; c += VLEN) {
      const long n = C - c < VLEN ? C - c : VLEN;
      V v = DW_NAME(act)(DW_NAME(load)(g->x + r * C + c, n), g->act) *
                DW_NAME(load)(g->s + c, n) +
            DW_NAME(load)(g->t + c, n);
      if (g->res) v += DW_NAME(load)(g->res + r * C + c, n);
      DW_NAME(store)(g->y + r * C + c, v, n);
    }
}

/* Backward pass 2: gx = act'(x) * (s * g + t * act(x) + d). */
static void DW_NAME(ab_bwd_input)(const void *p, long item) {
  const DW_NAME(ab_args) *g = p;
  const long C = g->C, r0 = item * g->rows;
  const long r1 = r0 + g->rows < g->N ? r0 + g->rows : g->N;
  for (long r = r0; r < r1; ++r)
    for (long c = 0; c < C; c += VLEN) {
      const long n = C - c < VLEN ? C - c : VLEN;
      V dx;
      const V a = DW_NAME(act_and_grad)(DW_NAME(load)(g->x + r * C + c, n),
                                        g->act, &dx);
      const V v = DW_NAME(load)(g->go + r * C + c, n) *
                      DW_NAME(load)(g->s + c, n) +
                  a * DW_NAME(load)(g->t + c, n) + DW_NAME(load)(g->d + c, n);
      DW_NAME(store)(g->gx + r * C + c, v * dx, n);
    }
}

/* The row blocks: about 64 of them, of at least 16 rows. */
static long DW_NAME(ab_rows)(long N) {
  const long rows = (N + 63) / 64;
  return rows < 16 ? 16 : rows;
}

/* Runs pass 1 and adds the blocks' slots in order: sum1[c], sum2[c]. */
static void DW_NAME(ab_sums)(DW_NAME(ab_args) *g, int nthreads,
                             double *sum1, double *sum2) {
  const long blocks = (g->N + g->rows - 1) / g->rows, C = g->C;
  dw_parallel_for(DW_NAME(ab_stats), g, blocks, nthreads);
  for (long c = 0; c < C; ++c) sum1[c] = sum2[c] = 0;
  for (long b = 0; b < blocks; ++b)
    for (long c = 0; c < C; ++c) {
      sum1[c] += g->part[b * 2 * C + c];
      sum2[c] += g->part[b * 2 * C + C + c];
    }
}

/* The scratch of act_bn_forward/backward: g->part for the row blocks'
 * partial sums followed by the two C-long totals, and three C-vectors
 * (returned). NULL, with nothing held, when out of memory. */
static DW_T *DW_NAME(ab_scratch)(DW_NAME(ab_args) *g) {
  const long blocks = (g->N + g->rows - 1) / g->rows;
  g->part = malloc((blocks * 2 + 2) * g->C * sizeof(double));
  DW_T *vecs = malloc(3 * g->C * sizeof(DW_T));
  if (!g->part || !vecs) {
    free(g->part);
    free(vecs);
    return NULL;
  }
  return vecs;
}

/* Training-mode res + BN(act(x)) over (N, C) rows, act 1 = ReLU, 2 = GELU.
 * Writes y and the batch mean and biased variance (C). res may be NULL.
 * Returns 1 when out of memory. */
int DW_NAME(act_bn_forward)(const DW_T *x, const DW_T *res,
                            const DW_T *gamma, const DW_T *beta, double eps,
                            int act, DW_T *y, DW_T *mean, DW_T *var, long N,
                            long C, int nthreads) {
  const long rows = DW_NAME(ab_rows)(N), blocks = (N + rows - 1) / rows;
  DW_NAME(ab_args) g = {x, res, NULL, NULL, NULL, NULL, NULL, y, NULL,
                        NULL, N, C, rows, act};
  DW_T *shift = DW_NAME(ab_scratch)(&g);
  if (!shift) return 1;
  DW_T *s = shift + C, *t = s + C;
  double *s1 = g.part + blocks * 2 * C, *s2 = s1 + C;
  g.shift = shift, g.s = s, g.t = t;
  for (long c = 0; c < C; c += VLEN) {
    const long n = C - c < VLEN ? C - c : VLEN;
    DW_NAME(store)(shift + c, DW_NAME(act)(DW_NAME(load)(x + c, n), act), n);
  }
  DW_NAME(ab_sums)(&g, nthreads, s1, s2);
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
  free(g.part);
  free(shift);
  return 0;
}

/* The gradients of DW_NAME(act_bn_forward) given go = dL/dy: gx, and the
 * weight and bias gradients gw, gb (C) (the residual's is go itself).
 * Returns 1 when out of memory. */
int DW_NAME(act_bn_backward)(const DW_T *go, const DW_T *x, const DW_T *mean,
                             const DW_T *var, const DW_T *gamma, double eps,
                             int act, DW_T *gx, DW_T *gw, DW_T *gb, long N,
                             long C, int nthreads) {
  const long rows = DW_NAME(ab_rows)(N), blocks = (N + rows - 1) / rows;
  DW_NAME(ab_args) g = {x, NULL, go, mean, NULL, NULL, NULL, NULL, gx,
                        NULL, N, C, rows, act};
  DW_T *s = DW_NAME(ab_scratch)(&g);
  if (!s) return 1;
  DW_T *t = s + C, *d = t + C;
  double *s1 = g.part + blocks * 2 * C, *s2 = s1 + C;
  g.s = s, g.t = t, g.d = d;
  DW_NAME(ab_sums)(&g, nthreads, s1, s2);
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
  free(g.part);
  free(s);
  return 0;
}

#undef V
#undef VI
#undef VLEN
#endif
