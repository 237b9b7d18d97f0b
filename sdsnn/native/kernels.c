/* Native CPU kernels for stateless inference (see sdsnn/native/__init__.py): fused multi-step
   LIF / PLIF neurons, and the convolution of a 1-channel input (the first layer of MNIST-like
   networks, see conv1ch below).

   Neurons (sdsnn_lif_*): fused multi-step LIF / PLIF for CPU inference.

   Each neuron starts at rest (v = 0), integrates T time steps and resets hard to 0, with the
   arithmetic of spikingjelly's CPU kernel as sdsnn.models._lif_inference writes it:
     LIF  (mode 0):  h = v + (x - v) / k       (first step: x / k,  k = tau)
     PLIF (mode 1):  h = v + (x - v) * k       (first step: x * k,  k = sigmoid(w))
     spike s = (h >= thr);  v = h - h * s
   Compiled with -ffp-contract=off, so no multiply-add is fused: every operation rounds as torch's
   element-wise kernels do and the spikes are bit-identical.  One pass over the input instead of
   four or five; lif_pool_seq also applies the 2x2 max-pool that follows a conv neuron, so the
   full-size spike map is never written.  The final potential is not returned (stateless
   inference).  Work is split across `threads` POSIX threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static inline void lif_span(const float* restrict x, float* restrict v, float* restrict s, long m,
                            int first, int mode, float k, float thr) {
  if (first) {
    if (mode) for (long j = 0; j < m; j++) { float h = x[j] * k; float b = h >= thr ? 1.0f : 0.0f; s[j] = b; v[j] = h - h * b; }
    else      for (long j = 0; j < m; j++) { float h = x[j] / k; float b = h >= thr ? 1.0f : 0.0f; s[j] = b; v[j] = h - h * b; }
  } else {
    if (mode) for (long j = 0; j < m; j++) { float h = v[j] + (x[j] - v[j]) * k; float b = h >= thr ? 1.0f : 0.0f; s[j] = b; v[j] = h - h * b; }
    else      for (long j = 0; j < m; j++) { float h = v[j] + (x[j] - v[j]) / k; float b = h >= thr ? 1.0f : 0.0f; s[j] = b; v[j] = h - h * b; }
  }
}

#define SPAN 1024  /* elements per block: potentials of one block stay in L1 over the T steps */

/* The work is a list of items, split into contiguous ranges, one per thread: blocks of SPAN
   elements of a time step (flat), or pairs of rows of one sample (pooled), so that even a batch
   of one sample is shared out. */
typedef struct {
  const float* x; long xs; float* out; long os;  /* input / output, step strides in elements */
  long i0, i1;                                   /* items [i0, i1) */
  long n;                                        /* flat: elements per time step */
  long H, W, C;                                  /* pooled: channels-last sample shape */
  long cs;                                       /* pooled, rows: input floats per pixel (>= C) */
  int T, mode, pool; float k, thr; int err;
  const void* ctx;                               /* conv1ch: its arguments */
} job_t;

/* rows: n pixels of C channels each, input pixel stride cs (a slice of a wider tensor, e.g. a
   convolution computed with extra output channels), output dense; items are groups of pixels */
static void* run_rows(job_t* j) {
  long C = j->C, G = SPAN / C > 0 ? SPAN / C : 1;
  float* v = malloc(G * C * sizeof(float));
  if (!v) { j->err = 1; return NULL; }
  for (long it = j->i0; it < j->i1; it++) {
    long p0 = it * G, p1 = p0 + G < j->n ? p0 + G : j->n;
    for (int t = 0; t < j->T; t++)
      for (long p = p0; p < p1; p++)
        lif_span(j->x + t * j->xs + p * j->cs, v + (p - p0) * C, j->out + t * j->os + p * C, C,
                 t == 0, j->mode, j->k, j->thr);
  }
  free(v);
  return NULL;
}

static void* run_flat(job_t* j) {
  float* v = malloc(SPAN * sizeof(float));
  if (!v) { j->err = 1; return NULL; }
  for (long it = j->i0; it < j->i1; it++) {
    long i = it * SPAN, m = j->n - i < SPAN ? j->n - i : SPAN;
    for (int t = 0; t < j->T; t++)
      lif_span(j->x + t * j->xs + i, v, j->out + t * j->os + i, m, t == 0, j->mode, j->k, j->thr);
  }
  free(v);
  return NULL;
}

/* rows 2r and 2r+1 of a sample through the neuron, then their 2x2 maxima; rows and columns past
   2*(H/2) and 2*(W/2) are dropped, as max_pool2d(2) drops them */
static void* run_pool(job_t* j) {
  long H2 = j->H / 2, W2 = j->W / 2, C = j->C, cs = j->cs, row = j->W * cs, m = 2 * W2 * C;
  float* buf = malloc(4 * m * sizeof(float));
  if (!buf) { j->err = 1; return NULL; }
  float *va = buf, *vb = buf + m, *sa = buf + 2 * m, *sb = buf + 3 * m;
  for (long it = j->i0; it < j->i1; it++) {
    long n = it / H2, r = it % H2;
    for (int t = 0; t < j->T; t++) {
      const float* xa = j->x + t * j->xs + (n * j->H + 2 * r) * row;
      if (cs == C) {
        lif_span(xa, va, sa, m, t == 0, j->mode, j->k, j->thr);
        lif_span(xa + row, vb, sb, m, t == 0, j->mode, j->k, j->thr);
      } else {
        for (long w = 0; w < 2 * W2; w++) {
          lif_span(xa + w * cs, va + w * C, sa + w * C, C, t == 0, j->mode, j->k, j->thr);
          lif_span(xa + row + w * cs, vb + w * C, sb + w * C, C, t == 0, j->mode, j->k, j->thr);
        }
      }
      float* o = j->out + t * j->os + (n * H2 + r) * W2 * C;
      for (long w = 0; w < W2; w++) {
        const float *a0 = sa + 2 * w * C, *a1 = a0 + C, *b0 = sb + 2 * w * C, *b1 = b0 + C;
        float* ow = o + w * C;
        for (long c = 0; c < C; c++) {
          float p = a0[c] > a1[c] ? a0[c] : a1[c], q = b0[c] > b1[c] ? b0[c] : b1[c];
          ow[c] = p > q ? p : q;
        }
      }
    }
  }
  free(buf);
  return NULL;
}

/* The convolution of a 1-channel image, output channels-last:
     y[n, oy, ox, c] = (sum over k = (ky, kx), in that order, of w[k][c] * x[n, iy, ix]) + b[c]
   with zeros outside the image.  Each output is summed in this fixed order whatever C is, so a
   network whose first layer lost output channels to pruning computes the kept channels' values
   bit for bit as the full layer does (compaction changes no output); sdsnn.models repeats the
   same operations with torch ops where this library is not available.  Vectorised over blocks of
   16 output channels (weights zero-padded to a multiple of 16) and register-blocked over 8
   output pixels of a row, from zero-padded copies of the kh input rows. */
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define CB 16
#define PB 8
typedef struct {
  const float* x; long H, W; const float* w; const float* b; long C, CP;  /* w: [kh*kw][CP], b: [CP] */
  int kh, kw, sh, sw, ph, pw, dh, dw; float* y; long OH, OW, L;           /* L: padded row length */
} conv_t;

static void* run_conv(job_t* j) {
  const conv_t* a = j->ctx;
  long C = a->C, CP = a->CP, OW = a->OW, L = a->L;
  float* rows = calloc((size_t)a->kh * L, sizeof(float));
  if (!rows) { j->err = 1; return NULL; }
  for (long r = j->i0; r < j->i1; r++) {
    long n = r / a->OH, oy = r % a->OH;
    for (int ky = 0; ky < a->kh; ky++) {  /* the input rows this output row reads, zero-padded */
      long iy = oy * a->sh - a->ph + (long)ky * a->dh;
      float* xr = rows + ky * L + a->pw;
      if (iy < 0 || iy >= a->H) memset(xr, 0, a->W * sizeof(float));
      else memcpy(xr, a->x + (n * a->H + iy) * a->W, a->W * sizeof(float));
    }
    float* yr = a->y + r * OW * C;
    for (long ox0 = 0; ox0 < OW; ox0 += PB) {
      long np = OW - ox0 < PB ? OW - ox0 : PB;
      for (long c0 = 0; c0 < CP; c0 += CB) {
        v16 acc[PB];
#pragma GCC unroll 8
        for (int p = 0; p < PB; p++) acc[p] = (v16){0};
        for (int ky = 0; ky < a->kh; ky++) {
          const float* xr = rows + ky * L + ox0 * a->sw;
          for (int kx = 0; kx < a->kw; kx++) {
            v16 wv = *(const v16*)(a->w + ((long)ky * a->kw + kx) * CP + c0);
            const float* xk = xr + (long)kx * a->dw;
#pragma GCC unroll 8
            for (int p = 0; p < PB; p++) { v16 t = wv * xk[p * a->sw]; acc[p] = acc[p] + t; }
          }
        }
        long m = C - c0 < CB ? C - c0 : CB;
        for (long p = 0; p < np; p++) {
          float* yo = yr + (ox0 + p) * C + c0;
          if (a->b) for (long i = 0; i < m; i++) yo[i] = acc[p][i] + a->b[c0 + i];
          else for (long i = 0; i < m; i++) yo[i] = acc[p][i];
        }
      }
    }
  }
  free(rows);
  return NULL;
}

static void* run(void* arg) {
  job_t* j = arg;
  return j->pool == 3 ? run_conv(j) : j->pool == 1 ? run_pool(j) : j->pool == 2 ? run_rows(j) : run_flat(j);
}

/* 0 on success (also for no work at all), 1 when memory ran out (the output is then incomplete);
   the entry points below return 2 for arguments they cannot take */
static int dispatch(job_t base, long items, int threads) {
  if (items <= 0 || base.T <= 0) return 0;
  if (threads < 1) threads = 1;
  if (threads > items) threads = (int)items;
  if (threads > 64) threads = 64;
  job_t jobs[64];
  pthread_t tid[64];
  int started[64] = {0}, err = 0;
  for (int i = 0; i < threads; i++) {
    jobs[i] = base;
    jobs[i].i0 = items * i / threads;
    jobs[i].i1 = items * (i + 1) / threads;
    jobs[i].err = 0;
  }
  for (int i = 1; i < threads; i++)
    started[i] = pthread_create(&tid[i], NULL, run, &jobs[i]) == 0;
  run(&jobs[0]);
  for (int i = 1; i < threads; i++) {
    if (started[i]) pthread_join(tid[i], NULL);
    else run(&jobs[i]);  /* no thread to be had: this one does it */
  }
  for (int i = 0; i < threads; i++) err |= jobs[i].err;
  return err;
}

/* x: T steps of N samples of `per` elements (step stride xs, 0 for a static input); out likewise
   with step stride os; the element order within a step is the same in x and out. */
int sdsnn_lif_seq(const float* x, long xs, float* out, long os, long N, long per, int T,
                  int mode, float k, float thr, int threads) {
  long n = N * per;
  job_t j = {x, xs, out, os, 0, 0, n, 0, 0, 0, 0, T, mode, 0, k, thr, 0};
  return dispatch(j, (n + SPAN - 1) / SPAN, threads);
}

/* x: T steps of P pixels of C channels, pixel stride cs >= C (step stride xs); out: T steps of
   P pixels of C channels, dense (step stride os). */
int sdsnn_lif_rows(const float* x, long xs, float* out, long os, long P, long C, long cs, int T,
                   int mode, float k, float thr, int threads) {
  if (C < 1 || cs < C) return 2;
  long G = SPAN / C > 0 ? SPAN / C : 1;
  job_t j = {x, xs, out, os, 0, 0, P, 0, 0, C, cs, T, mode, 2, k, thr, 0};
  return dispatch(j, (P + G - 1) / G, threads);
}

/* x: T steps of channels-last samples [H, W, C] with pixel stride cs >= C (step stride xs, 0 for
   a static input); out: T steps of [N, H/2, W/2, C], dense (step stride os). */
int sdsnn_lif_pool_seq(const float* x, long xs, float* out, long os, long N, long H, long W, long C,
                       long cs, int T, int mode, float k, float thr, int threads) {
  if (H < 2 || W < 2 || C < 1 || cs < C) return 2;  /* the caller must not ask */
  job_t j = {x, xs, out, os, 0, 0, 0, H, W, C, cs, T, mode, 1, k, thr, 0};
  return dispatch(j, N * (H / 2), threads);
}

/* x: [N, H, W] (one channel, dense); w: [kh, kw, C] (dense, the conv weight transposed); b: [C] or
   NULL; y: [N, OH, OW, C] (dense), OH and OW as torch computes them from the geometry. */
int sdsnn_conv1ch(const float* x, long N, long H, long W, const float* w, const float* b, long C,
                  int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                  float* y, long OH, long OW, int threads) {
  if (N < 0 || H < 1 || W < 1 || C < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 ||
      dh < 1 || dw < 1 || OH < 0 || OW < 0 ||
      (OH > 0 && (OH - 1) * sh + (long)(kh - 1) * dh >= H + 2L * ph) ||
      (OW > 0 && (OW - 1) * sw + (long)(kw - 1) * dw >= W + 2L * pw))
    return 2;
  long K = (long)kh * kw, CP = (C + CB - 1) / CB * CB;
  /* a padded row: pw zeros, the image row, then zeros far enough for the last pixel block */
  long L = pw + W + (OW + PB) * sw + (long)(kw - 1) * dw + 1;
  float* wb = calloc((size_t)(K + 1) * CP, sizeof(float));
  if (!wb) return 1;
  for (long k = 0; k < K; k++) memcpy(wb + k * CP, w + k * C, C * sizeof(float));
  if (b) memcpy(wb + K * CP, b, C * sizeof(float));
  conv_t a = {x, H, W, wb, b ? wb + K * CP : NULL, C, CP, kh, kw, sh, sw, ph, pw, dh, dw, y, OH, OW, L};
  job_t j;
  memset(&j, 0, sizeof j);
  j.T = 1; j.pool = 3; j.ctx = &a;
  int rc = dispatch(j, N * OH, threads);
  free(wb);
  return rc;
}
