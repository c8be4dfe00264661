// FastNet in one kernel launch over the whole GPU: one CTA per SM, for networks whose weights do not
// fit one cluster's shared memory (F2). Activations live in global memory (the L2 keeps them), each
// layer's tiles go to CTAs, and a layer starts when a per-layer ready counter says that every CTA
// finished the previous one (release add, acquire load; no grid-wide barrier). Before waiting, a CTA
// asks the copy engine for the weights of its next tile, so that transfer overlaps the wait.
//
// A tile is (image, band of R output rows, BN output channels): the CTA copies the band's input
// rows (zero border included) into shared memory, runs the implicit GEMM on the tensor cores
// (mma m16n8k16; a pooled layer computes its four 2x2 sub-positions as four m16 tiles), and writes
// max-pool, bias, GELU and the residual as FP16 to the layer's output buffer. The first layer
// computes the whitening rows its band reads from the image instead. The last layer reduces its
// channels' maxima over positions to partial logits; the last CTA to finish adds them up in a fixed
// order, writes the logits and the top class, and resets the counters for the next launch.
//
// The network's shape comes from the generated text around this one (grid.py): constants G,
// THREADS, ..., one struct per convolution before it, run_layers() after it. common.cu comes first.

DEV uint4 load_cg16(const void* p) {  // through L2 only: other SMs wrote it during this launch
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
  return v;
}
DEV u32 load_cg4(const void* p) {
  u32 v;
  asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
DEV u32 load_acquire(const u32* p) {
  u32 v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Every thread of the CTA returns once `target` CTAs have signalled `counter`. A count that never
// comes (a bug, or a CTA that could not be placed) traps instead of hanging the GPU.
DEV void wait_count(const u32* counter, u32 target) {
  if (threadIdx.x == 0) {
    for (u32 tries = 0; load_acquire(counter) < target; ++tries)
      if (tries > (1u << 24)) asm volatile("trap;");
  }
  __syncthreads();
}
// Thread 0, after a __syncthreads that follows the CTA's stores: publish them, count this CTA.
DEV u32 signal_count(u32* counter) {
  __threadfence();
  return atomicAdd(counter, 1u);
}

DEV void stamp(long long* stamps, int i) {
  if (TIMING && stamps != nullptr && threadIdx.x == 0) stamps[blockIdx.x * NSTAMPS + i] = (long long)global_ns();
}

template <class L>
DEV void tile_coords(int tile, int& b, int& y0, int& nblk) {
  nblk = tile % L::NBLOCKS;
  const int rest = tile / L::NBLOCKS;
  y0 = (rest % L::NBANDS) * L::R;
  b = rest / L::NBANDS;
}
// first padded input row of a band and how many rows it reads
template <class L>
DEV void band_rows(int y0, int& ra, int& rows) {
  ra = L::POOL ? 2 * y0 : y0;
  rows = min(L::A_ROWS, L::IN_WP - ra);
}

// thread 0: this tile's weights and biases into W (a bulk copy counted on the CTA's weight barrier)
template <class L>
DEV void load_weights(unsigned char* smem, const unsigned char* weights, int nblk) {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // earlier reads of W come first
  const u32 bar = smem_u32(smem + MBAR_OFF);
  mbar_expect(bar, L::W_BYTES);
  bulk_load(smem_u32(smem), weights + L::W_GOFF + (u64)nblk * L::W_BYTES, L::W_BYTES, bar);
}

// ------------------------------------------------------------------ a band of the input

// Once the previous layer is complete: the band's padded input rows, as they are in global memory
// (FP16, channels last, stride IN_S). BAND_BULK: thread 0 asks the copy engine (one bulk copy counted
// on the band's barrier; the proxy fence orders the other CTAs' stores, seen through the counter,
// before its reads). Otherwise every thread loads its share through L2.
template <class L>
DEV void load_band(unsigned char* smem, const unsigned char* work, int b, int ra, int rows) {
  const unsigned char* src = work + L::IN_GOFF + 2 * ((u64)b * L::IN_IMG + (u64)ra * L::IN_WP * L::IN_S);
  const int bytes = rows * L::IN_WP * L::IN_S * 2;
  if constexpr (BAND_BULK) {
    if (threadIdx.x == 0) {
      asm volatile("fence.proxy.async.global;" ::: "memory");
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // earlier reads of A come first
      const u32 bar = smem_u32(smem + MBAR_OFF + 8);
      mbar_expect(bar, bytes);
      bulk_load(smem_u32(smem + L::A_OFF), src, bytes, bar);
    }
  } else {
    const uint4* from = (const uint4*)src;
    uint4* dst = (uint4*)(smem + L::A_OFF);
    const int n = bytes / 16;
    int i = threadIdx.x;
    for (; i + 7 * THREADS < n; i += 8 * THREADS) {  // eight loads in flight per thread
      uint4 v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = load_cg16(from + i + k * THREADS);
#pragma unroll
      for (int k = 0; k < 8; ++k) dst[i + k * THREADS] = v[k];
    }
    for (; i < n; i += THREADS) dst[i] = load_cg16(from + i);
  }
}

// The first layer's band: rows ra.. of the whitening layer's padded output (2x2 conv, 3 -> C0
// channels, + bias, GELU, FP16; border and channels C0..CIN-1 zero), computed from the image in
// IMG (FP16 NCHW; image 1 is the mirror) with the FP32 weights in L0S ([C0][12], k = c*4 + dy*2 + dx,
// then the C0 biases).
template <class L>
DEV void whiten_band(unsigned char* smem, int b, int ra, int rows) {
  const float* w0 = (const float*)(smem + L0S_OFF);
  const unsigned short* img = (const unsigned short*)(smem + IMG_OFF);
  unsigned short* a = (unsigned short*)(smem + L::A_OFF);
  for (int pos = threadIdx.x; pos < rows * L::IN_WP; pos += THREADS) {
    const int col = pos % L::IN_WP, y = ra + pos / L::IN_WP - 1, x = col - 1;
    u32* dst = (u32*)(a + pos * L::IN_S);
    if (y >= 0 && y < H0 && x >= 0 && x < H0) {
      float px[12];
#pragma unroll
      for (int k = 0; k < 12; ++k) {
        const int ch = k / 4, dy = (k / 2) & 1, dx = k & 1, xx = b == 1 ? 31 - (x + dx) : x + dx;
        px[k] = half_lo(img[(ch * 32 + y + dy) * 32 + xx]);
      }
#pragma unroll 4
      for (int c = 0; c < L::CIN; c += 2) {
        float v[2] = {0.f, 0.f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (c + h < C0) {
            float s = 0.f;
#pragma unroll
            for (int k = 0; k < 12; ++k) s = fmaf(w0[(c + h) * 12 + k], px[k], s);
            v[h] = gelu(s + w0[C0 * 12 + c + h]);
          }
        }
        dst[c / 2] = pack_half2(v[0], v[1]);
      }
    } else {
      for (int c = 0; c < L::CIN; c += 2) dst[c / 2] = 0u;
    }
  }
}

// ------------------------------------------------------------------ one tile

// The band position (row * HOUT + column) that MMA row q of a tile computes. grid.py orders them so
// that the 8 rows of a fragment load from distinct shared-memory banks where it can (ORDERS, in
// constant memory); past the band's positions, NONE (beyond every band's rows).
template <class L>
DEV int position_of(int q) { return ORDERS[L::INDEX - 1][q]; }

// Implicit GEMM: rows are the band's output positions (MT m16 tiles; SUBS sub-positions for a
// pooled layer), columns the tile's BN channels, K = 9 taps x CIN. Work items (m16 tile, K split)
// go to warps, which leave their accumulators in RED for finish.
template <class L>
DEV void compute(unsigned char* smem, int y0) {
  constexpr int SUBS = L::POOL ? 4 : 1, CPC = L::CIN / 16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const unsigned short* in = (const unsigned short*)(smem + L::A_OFF);
  const unsigned short* w = (const unsigned short*)(smem);
  float* red = (float*)(smem + L::RED_OFF);
  const int rows_here = min(L::R, L::HOUT - y0);
  for (int item = warp; item < L::MT * L::KS; item += WARPS) {
    const int m = item / L::KS, ks = item % L::KS;
    int base[SUBS][2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // a row past the band reads what the first valid row of its group of 8 reads: the same words,
      // so no extra shared-memory pass (position 0 when the whole group is past the band)
      int first = 0;
      for (int k = 7; k >= 0; --k) {
        const int j = position_of<L>(m * 16 + 8 * h + k);
        if (j / L::HOUT < rows_here) first = j;
      }
      int idx = position_of<L>(m * 16 + g + 8 * h);
      if (idx / L::HOUT >= rows_here) idx = first;
      const int oy = idx / L::HOUT, ox = idx % L::HOUT;
#pragma unroll
      for (int s = 0; s < SUBS; ++s) {
        const int cy = L::POOL ? 2 * oy + (s >> 1) : oy, cx = L::POOL ? 2 * ox + (s & 1) : ox;
        base[s][h] = (cy * L::IN_WP + cx) * L::IN_S;
      }
    }
    float acc[SUBS][L::NB8][4] = {};
    const int kc0 = ks * L::KC / L::KS, kc1 = (ks + 1) * L::KC / L::KS;
#pragma unroll (KUNROLL)
    for (int kc = kc0; kc < kc1; ++kc) {
      const int tap = kc / CPC, c0 = (kc % CPC) * 16;
      const int toff = ((tap / 3) * L::IN_WP + (tap % 3)) * L::IN_S + c0 + 2 * t;
      u32 bf[L::NB8][2];
#pragma unroll
      for (int nb = 0; nb < L::NB8; ++nb) {
        const unsigned short* wr = w + (nb * 8 + g) * L::WROW + kc * 16 + 2 * t;
        bf[nb][0] = *(const u32*)wr;
        bf[nb][1] = *(const u32*)(wr + 8);
      }
#pragma unroll
      for (int s = 0; s < SUBS; ++s) {
        const u32 a0 = *(const u32*)(in + base[s][0] + toff), a1 = *(const u32*)(in + base[s][1] + toff);
        const u32 a2 = *(const u32*)(in + base[s][0] + toff + 8), a3 = *(const u32*)(in + base[s][1] + toff + 8);
#pragma unroll
        for (int nb = 0; nb < L::NB8; ++nb) mma16816(acc[s][nb], a0, a1, a2, a3, bf[nb][0], bf[nb][1]);
      }
    }
#pragma unroll
    for (int s = 0; s < SUBS; ++s)
#pragma unroll
      for (int nb = 0; nb < L::NB8; ++nb)
#pragma unroll
        for (int i = 0; i < 4; ++i) red[(((item * SUBS + s) * L::NB8 + nb) * 4 + i) * 32 + lane] = acc[s][nb][i];
  }
}

// One thread per (m16 tile, n8 tile, row, column pair): the sum over K splits, the max over the
// pool's sub-positions, + bias, GELU (+ residual), FP16 to the output buffer. The last layer keeps
// the FP16-rounded values in FEAT for the maxima over positions, then writes its partial logits.
template <class L>
DEV void finish(unsigned char* smem, const unsigned char* weights, unsigned char* work, int b, int y0, int nblk) {
  constexpr int SUBS = L::POOL ? 4 : 1, UNITS = L::MT * L::NB8 * 64;
  const float* red = (const float*)(smem + L::RED_OFF);
  const float* bias = (const float*)(smem + L::BN * L::WROW * 2);
  float* feat = (float*)(smem + L::FEAT_OFF);  // last layer: [MT * 16][BN], then the BN maxima
  const int rows_here = min(L::R, L::HOUT - y0);
  for (int u = threadIdx.x; u < UNITS; u += THREADS) {
    const int t = u & 3, p = (u >> 2) & 15, nb = (u >> 6) % L::NB8, m = u / (64 * L::NB8);
    const int h = p >> 3, lane = (p & 7) * 4 + t, q = m * 16 + p, idx = position_of<L>(q);
    const int oy = idx / L::HOUT, ox = idx % L::HOUT, y = y0 + oy;
    const int nl = nb * 8 + 2 * t, n = nblk * L::BN + nl;
    const bool valid = oy < rows_here && n < L::COUT;
    float v[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -3.0e38f;
#pragma unroll
      for (int s = 0; s < SUBS; ++s) {
        float sum = 0.f;
#pragma unroll
        for (int ks = 0; ks < L::KS; ++ks)
          sum += red[(((((m * L::KS + ks) * SUBS + s) * L::NB8 + nb) * 4) + 2 * h + i) * 32 + lane];
        mx = fmaxf(mx, sum);
      }
      v[i] = gelu(mx + bias[nl + i]);
    }
    const u64 at = 2 * ((u64)b * L::OUT_IMG + ((y + 1) * L::OUT_WP + ox + 1) * L::OUT_S + n);
    if (L::SKIP && valid) {  // the group's residual: its first convolution's output, same layout
      const u32 old = load_cg4(work + L::SKIP_GOFF + at);
      v[0] += half_lo(old);
      v[1] += half_hi(old);
    }
    if constexpr (L::LAST) {
      feat[q * L::BN + nl] = valid ? round_half(v[0]) : -3.0e38f;
      feat[q * L::BN + nl + 1] = valid ? round_half(v[1]) : -3.0e38f;
    } else {  // the four threads of a row's n8 tile: one 16-byte store by the first
      const u32 word = pack_half2(v[0], v[1]);
      u32 w4[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) w4[k] = __shfl_sync(0xffffffffu, word, (threadIdx.x & 31 & ~3) + k);
      if (valid && t == 0) *(uint4*)(work + L::OUT_GOFF + at) = make_uint4(w4[0], w4[1], w4[2], w4[3]);
    }
  }
  // the next layer's CTAs may read these outputs with the copy engine (the async proxy)
  if constexpr (!L::LAST && BAND_BULK) asm volatile("fence.proxy.async.global;" ::: "memory");
  if constexpr (L::LAST) {
    __syncthreads();
    float* featmax = feat + L::MT * 16 * L::BN;
    for (int n = threadIdx.x; n < L::BN; n += THREADS) {
      float mx = -3.0e38f;
      for (int q = 0; q < L::MT * 16; ++q) mx = fmaxf(mx, feat[q * L::BN + n]);
      featmax[n] = mx;
    }
    __syncthreads();
    const unsigned short* head = (const unsigned short*)(weights + HEAD_GOFF);  // [features][CLASSES] FP16
    float* partials = (float*)(work + PARTIALS_GOFF);  // [BATCH][NBLOCKS][CLASSES]
    for (int cls = threadIdx.x; cls < CLASSES; cls += THREADS) {
      float partial = 0.f;
      for (int nl = 0; nl < L::BN; ++nl) {
        const int n = nblk * L::BN + nl;
        if (n < L::COUT) partial = fmaf(featmax[nl], half_lo(head[n * CLASSES + cls]), partial);
      }
      partials[(b * L::NBLOCKS + nblk) * CLASSES + cls] = partial;
    }
  }
}

// One layer for this CTA: its tiles (blockIdx.x, + G, ...), between the wait for the previous
// layer's counter and the signal on its own.
template <class L>
DEV void layer(unsigned char* smem, const unsigned char* weights, unsigned char* work, long long* stamps, u32& phase,
               u32& band_phase) {
  u32* counters = (u32*)(work + COUNTERS_GOFF);
  const int cta = blockIdx.x;
  if (cta < L::TILES && threadIdx.x == 0) load_weights<L>(smem, weights, cta % L::NBLOCKS);
  if (L::INDEX > 1) wait_count(counters + L::INDEX - 2, G);
  constexpr int S0 = 5 * (L::INDEX - 1) + 1;  // this layer's stamps: inputs ready, band in, weights in,
  stamp(stamps, S0);                           // computed, stored
  for (int tile = cta; tile < L::TILES; tile += G) {
    int b, y0, nblk, ra, rows;
    tile_coords<L>(tile, b, y0, nblk);
    band_rows<L>(y0, ra, rows);
    if (tile != cta && threadIdx.x == 0) load_weights<L>(smem, weights, nblk);
    if constexpr (L::FIRST) {
      whiten_band<L>(smem, b, ra, rows);
    } else {
      load_band<L>(smem, work, b, ra, rows);
      if constexpr (BAND_BULK) {
        mbar_wait(smem_u32(smem + MBAR_OFF + 8), band_phase & 1);
        ++band_phase;
      }
    }
    __syncthreads();
    stamp(stamps, S0 + 1);
    mbar_wait(smem_u32(smem + MBAR_OFF), phase & 1);
    ++phase;
    stamp(stamps, S0 + 2);
    compute<L>(smem, y0);
    __syncthreads();
    stamp(stamps, S0 + 3);
    finish<L>(smem, weights, work, b, y0, nblk);
    __syncthreads();  // W, A, RED and FEAT are free again; every output of the tile is stored
  }
  stamp(stamps, S0 + 4);
  if (!L::LAST && threadIdx.x == 0) signal_count(counters + L::INDEX - 1);
}

DEV void run_layers(unsigned char* smem, const unsigned char* weights, unsigned char* work, long long* stamps);

// image: one (1, 3, 32, 32) FP16 normalised image, 16-byte aligned. weights: the packed network
// (grid.py: whitening, each layer's per-tile slices, head). work: the activation buffers (borders
// zero), the counters (zero between launches) and the partial logits. logits: (1, CLASSES) FP32, the
// mirror's rows averaged. top_class and stamps may be null; stamps (TIMING builds) gets G x NSTAMPS
// %globaltimer readings in ns.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
fastnet_grid(const void* __restrict__ image, const unsigned char* __restrict__ weights, unsigned char* work,
             float* __restrict__ logits, int* __restrict__ top_class, long long* __restrict__ stamps) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ u32 finisher;
  stamp(stamps, 0);
  if (threadIdx.x == 0) {
    mbar_init(smem_u32(smem + MBAR_OFF));  // the weights of a tile
    mbar_init(smem_u32(smem + MBAR_OFF + 8));  // its input band
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  for (int i = threadIdx.x; i < IMG_BYTES / 16; i += THREADS)
    ((uint4*)(smem + IMG_OFF))[i] = ((const uint4*)image)[i];
  for (int i = threadIdx.x; i < C0 * 13; i += THREADS)
    ((float*)(smem + L0S_OFF))[i] = ((const float*)(weights + L0_GOFF))[i];
  __syncthreads();
  run_layers(smem, weights, work, stamps);
  // the last layer's counter: the CTA that completes it adds the partial logits up
  u32* counters = (u32*)(work + COUNTERS_GOFF);
  if (threadIdx.x == 0) finisher = signal_count(counters + NCONV - 1) == G - 1;
  __syncthreads();
  if (!finisher) return;
  __threadfence();
  float* scores = (float*)smem;  // the layers' space is free now
  const float* partials = (const float*)(work + PARTIALS_GOFF);
  if (threadIdx.x < CLASSES) {
    float s = 0.f;
    for (int k = 0; k < BATCH * HEAD_PARTS; ++k) s += __uint_as_float(load_cg4(partials + k * CLASSES + threadIdx.x));
    s *= 1.f / BATCH;
    logits[threadIdx.x] = s;
    scores[threadIdx.x] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (top_class != nullptr) {
      int best = 0;
      for (int j = 1; j < CLASSES; ++j) best = scores[j] > scores[best] ? j : best;
      top_class[0] = best;
    }
    // every CTA has passed every wait (each counted the last layer after its waits): reset
    for (int k = 0; k < NCONV; ++k) ((volatile u32*)counters)[k] = 0;
    stamp(stamps, NSTAMPS - 1);
  }
}
