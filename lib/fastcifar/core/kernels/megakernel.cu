// FastNet in one kernel launch: one thread-block cluster, every layer's weights in shared memory
// (bulk copies, one mbarrier per layer), activations sent into every CTA's shared memory with
// st.async (one mbarrier per layer's outputs), the tensor cores for every convolution. The network's
// shape comes from the generated text placed before this one (constants CS, THREADS, ..., one struct
// per convolution) and after it (load_weights, arm_layers, run_convs); see megakernel.py.
//
// The helpers it shares with grid.cu (FP16, GELU, MMA, mbarriers, bulk copies) are in common.cu,
// placed before this text.

// Cluster barrier without a GPU-wide fence: data between CTAs travels with st.async and mbarriers
// (below), so this barrier only orders start-up (every CTA's mbarriers exist before any push) and exit.
DEV void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
DEV void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
DEV u32 cluster_rank() { u32 r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }
DEV u32 remote_addr(u32 local, u32 rank) {
  u32 r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(local), "r"(rank));
  return r;
}

// registers -> another CTA's shared memory, counted on that CTA's barrier
DEV void push16(u32 dst, u32 a, u32 b, u32 c, u32 d, u32 bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
               :: "r"(dst), "r"(a), "r"(b), "r"(c), "r"(d), "r"(bar) : "memory");
}
DEV void push4(u32 dst, float v, u32 bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
               :: "r"(dst), "r"(__float_as_uint(v)), "r"(bar) : "memory");
}
// barrier k of this CTA: weights/image sections first, then one per convolution's output
DEV u32 bar_addr(unsigned char* smem, int k) { return smem_u32(smem + MBAR_OFF + 8 * k); }

// ------------------------------------------------------------------ zeroing the border of a layout

// The one-position border (the convolution's zero padding) of every image of an output layout.
template <class L>
DEV void zero_halo(unsigned char* smem) {
  if constexpr (L::LAST == 0 && L::OUT_PAD > 0) {
    constexpr int WP = L::OUT_WP, BORDER = 4 * WP - 4, VEC = L::OUT_S / 8;  // 16-byte vectors per position
    constexpr int TOTAL = BATCH * BORDER * VEC;
    uint4* out = (uint4*)(smem + L::OUT_OFF);
    for (int i = threadIdx.x; i < TOTAL; i += THREADS) {
      int v = i % VEC, pos = (i / VEC) % BORDER, b = i / (VEC * BORDER);
      int y, x;
      if (pos < WP) { y = 0; x = pos; }
      else if (pos < 2 * WP) { y = WP - 1; x = pos - WP; }
      else { int q = pos - 2 * WP; y = 1 + q / 2; x = (q & 1) ? WP - 1 : 0; }
      out[((b * WP + y) * WP + x) * VEC + v] = make_uint4(0, 0, 0, 0);
    }
  }
}

// ------------------------------------------------------------------ the whitening layer, per band

// Layer 0 (2x2 conv, 3 -> C0 channels, GELU) computed by each CTA for the rows its first
// convolution reads: for every local tile, BAND_ROWS padded rows of the first convolution's input
// (zero border included, channels C0..CIN-1 zero). It is one more MMA: rows are the band's padded
// positions, K = 16 (k = channel * 4 + dy * 2 + dx, 12..15 zero), columns the CIN channels. The
// image is in IMG as it came (FP16 NCHW, or uint8 HWC whose normalisation layer 0's weights hold).
DEV u32 pixel_bits(const unsigned char* smem, int c, int y, int x) {
  if constexpr (INPUT_KIND == 0) {
    return ((const unsigned short*)(smem + IMG_OFF))[(c * 32 + y) * 32 + x];
  } else {
    return pack_half2((float)smem[IMG_OFF + (y * 32 + x) * 3 + c], 0.f) & 0xffffu;  // 0..255: exact in FP16
  }
}

template <class L>
DEV void whiten_band(unsigned char* smem, u32 rank) {
  constexpr int MPARTS = CS / L::NG, TPC = (L::MT + MPARTS - 1) / MPARTS;
  constexpr int NPOS = L::BAND_ROWS * L::IN_WP, MTILES = (NPOS + 15) / 16, N8 = L::CIN / 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const unsigned short* w0 = (const unsigned short*)(smem + L0_OFF);  // [CIN][16] FP16, rows n
  const float* b0 = (const float*)(smem + L0_OFF + L::CIN * 16 * 2);   // [CIN] FP32
  u32 bf[N8][2];
#pragma unroll
  for (int nb = 0; nb < N8; ++nb) {
    bf[nb][0] = *(const u32*)(w0 + (nb * 8 + g) * 16 + 2 * t);
    bf[nb][1] = *(const u32*)(w0 + (nb * 8 + g) * 16 + 2 * t + 8);
  }
  const int mp = rank / L::NG;
  for (int item = warp; item < TPC * MTILES; item += WARPS) {
    const int j = item / MTILES, mt = item % MTILES, tile = mp + j * MPARTS;
    if (mp >= MPARTS || tile >= L::MT) continue;
    const int b = tile / L::TPI, y0 = (tile % L::TPI) * L::RPT;
    u32 a[4];
    bool valid[2];
    int m[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m[h] = mt * 16 + g + 8 * h;
      const int pr = m[h] / L::IN_WP, pc = m[h] % L::IN_WP, row = 2 * y0 + pr - 1, col = pc - 1;
      valid[h] = m[h] < NPOS && row >= 0 && row < H0 && col >= 0 && col < H0;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int k = 2 * t + 8 * half, c = k / 4, dy = (k / 2) & 1;  // k, k + 1: dx = 0, 1
        u32 v = 0;
        if (valid[h] && k < 12) {
          const int x0 = b == 1 ? 31 - col : col, x1 = b == 1 ? 30 - col : col + 1;  // the mirror: row 1 flipped
          v = pixel_bits(smem, c, row + dy, x0) | (pixel_bits(smem, c, row + dy, x1) << 16);
        }
        a[2 * half + h] = v;
      }
    }
    float acc[N8][4] = {};
#pragma unroll
    for (int nb = 0; nb < N8; ++nb) mma16816(acc[nb], a[0], a[1], a[2], a[3], bf[nb][0], bf[nb][1]);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (m[h] >= NPOS) continue;
      const int pr = m[h] / L::IN_WP, pc = m[h] % L::IN_WP;
      unsigned short* dst = (unsigned short*)(smem + L::IN_OFF) + (j * L::BAND_ROWS + pr) * L::IN_WP * L::IN_S + pc * L::IN_S;
#pragma unroll
      for (int nb = 0; nb < N8; ++nb) {
        const int n = nb * 8 + 2 * t;
        float v0 = 0.f, v1 = 0.f;
        if (valid[h] && n < C0) {
          v0 = gelu(acc[nb][2 * h] + b0[n]);
          v1 = gelu(acc[nb][2 * h + 1] + b0[n + 1]);
        }
        *(u32*)(dst + n) = pack_half2(v0, v1);
      }
    }
  }
}

// ------------------------------------------------------------------ one convolution

// Implicit GEMM on the tensor cores (mma m16n8k16, FP16 in, FP32 accumulate). Rows are output
// positions of one tile (RPT whole rows of one image); a pooled layer computes its four 2x2
// sub-positions as four m16 tiles. Columns are this CTA's output channels. Work items (tile, block
// of NB n8 tiles, K split) go to warps, which leave their partial sums in RED; then every thread
// of the CTA finishes a slice of the outputs (see finish).
template <class L, int SUBS>
DEV void accumulate(const unsigned char* smem, int j, int b, int y0, int blk, int kc0, int kc1, int lane,
                    float (&acc)[SUBS][L::NB][4]) {
  const int g = lane >> 2, t = lane & 3;
  const int rows_here = min(L::RPT, L::HOUT - y0);
  int base[SUBS][2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    int p = g + 8 * h, ry = p / L::HOUT, x = p % L::HOUT;
    bool valid = ry < rows_here;
    int img = L::IN_BAND ? j * L::BAND_ROWS * L::IN_WP * L::IN_S : b * L::IN_IMG;
    int row0 = L::IN_BAND ? ry : y0 + ry;
#pragma unroll
    for (int s = 0; s < SUBS; ++s) {
      int cy = L::POOL ? 2 * row0 + (s >> 1) : row0;
      int cx = L::POOL ? 2 * x + (s & 1) : x;
      base[s][h] = valid ? img + (cy * L::IN_WP + cx) * L::IN_S : 0;
    }
  }
  const unsigned short* in = (const unsigned short*)(smem + L::IN_OFF);
  const unsigned short* w = (const unsigned short*)(smem + L::W_OFF);
  constexpr int CPC = L::CIN / 16;  // K chunks per tap
#pragma unroll 2
  for (int kc = kc0; kc < kc1; ++kc) {
    int tap = kc / CPC, c0 = (kc % CPC) * 16;
    int toff = ((tap / 3) * L::IN_WP + (tap % 3)) * L::IN_S + c0 + 2 * t;
    u32 bf[L::NB][2];
#pragma unroll
    for (int nb = 0; nb < L::NB; ++nb) {
      const unsigned short* wr = w + ((blk * L::NB + nb) * 8 + g) * L::WROW + kc * 16 + 2 * t;
      bf[nb][0] = *(const u32*)wr;
      bf[nb][1] = *(const u32*)(wr + 8);
    }
#pragma unroll
    for (int s = 0; s < SUBS; ++s) {
      u32 a0 = *(const u32*)(in + base[s][0] + toff);
      u32 a1 = *(const u32*)(in + base[s][1] + toff);
      u32 a2 = *(const u32*)(in + base[s][0] + toff + 8);
      u32 a3 = *(const u32*)(in + base[s][1] + toff + 8);
#pragma unroll
      for (int nb = 0; nb < L::NB; ++nb) mma16816(acc[s][nb], a0, a1, a2, a3, bf[nb][0], bf[nb][1]);
    }
  }
}

// RED holds, per item (tile j, block blk, split ks), the lanes' accumulators: value r of lane l at
// ((item * SUBS * NB * 4) + r) * 32 + l, with r = (s * NB + nb) * 4 + i (the MMA's C fragment: i = 0, 1
// row g, i = 2, 3 row g + 8; columns 2t, 2t + 1).
template <class L, int SUBS>
DEV int red_index(int j, int blk, int ks, int s, int nb, int i, int lane) {
  return ((((j * L::NBLK + blk) * L::KS + ks) * SUBS * L::NB + s * L::NB + nb) * 4 + i) * 32 + lane;
}

// One thread per (tile, n8 tile, row, column pair): the sum over K splits, the max over the pool's
// sub-positions, + bias, GELU (+ skip); the four threads of a row's n8 tile then hold 16 contiguous
// bytes, which each of them sends to a quarter of the cluster's CTAs as one 16-byte store.
// The last layer instead keeps FP16-rounded values for the max over positions (FEATBUF).
template <class L, int SUBS>
DEV void finish(unsigned char* smem, u32 rank) {
  constexpr int MPARTS = CS / L::NG, TPC = (L::MT + MPARTS - 1) / MPARTS;
  constexpr int UNITS = TPC * L::NPER * 64;  // (tile, n8 tile, 16 rows, 4 column pairs)
  const float* red = (const float*)(smem + RED_OFF);
  const float* bias = (const float*)(smem + L::BIAS_OFF);
  const int ng = rank % L::NG, mp = rank / L::NG;
  for (int u0 = threadIdx.x - (threadIdx.x & 31); u0 < UNITS; u0 += THREADS) {  // whole warps
    const int u = u0 + (threadIdx.x & 31);
    const bool in_range = u < UNITS;
    const int t = u & 3, p = (u >> 2) & 15, n8 = (u >> 6) % L::NPER, j = u / (64 * L::NPER);
    const int blk = n8 / L::NB, nb = n8 % L::NB, h = p >> 3, g = p & 7;
    const int tile = mp + j * MPARTS;
    const bool live = in_range && mp < MPARTS && tile < L::MT;
    const int b = tile / L::TPI, y0 = (tile % L::TPI) * L::RPT;
    const int ry = p / L::HOUT, x = p % L::HOUT, y = y0 + ry;
    const int n_local = n8 * 8 + 2 * t, n = ng * L::NPER * 8 + n_local;
    const bool valid = live && ry < min(L::RPT, L::HOUT - y0) && n < L::COUT;
    float v[2] = {0.f, 0.f};
    if (live) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float m = -3.0e38f;
#pragma unroll
        for (int s = 0; s < SUBS; ++s) {
          float sum = 0.f;
#pragma unroll
          for (int ks = 0; ks < L::KS; ++ks) sum += red[red_index<L, SUBS>(j, blk, ks, s, nb, 2 * h + i, g * 4 + t)];
          m = fmaxf(m, sum);
        }
        v[i] = gelu(m + bias[n_local + i]);
      }
    }
    if (L::SKIP && valid) {  // the group's residual: its first convolution's output, same layout
      const u32 old = *(const u32*)(smem + L::SKIP_OFF +
                                    2 * (b * L::SKIP_IMG + ((y + 1) * L::SKIP_WP + x + 1) * L::SKIP_S + n));
      v[0] += half_lo(old);
      v[1] += half_hi(old);
    }
    if constexpr (L::LAST) {
      if (in_range) {
        float* fb = (float*)(smem + FEATBUF_OFF) + (j * 16 + p) * L::NPER * 8 + n_local;
        fb[0] = valid ? round_half(v[0]) : -3.0e38f;
        fb[1] = valid ? round_half(v[1]) : -3.0e38f;
      }
    } else {
      const u32 off = L::OUT_OFF + 2 * (b * L::OUT_IMG + ((y + L::OUT_PAD) * L::OUT_WP + x + L::OUT_PAD) * L::OUT_S + n);
      u32 word = pack_half2(v[0], v[1]);
      u32 w4[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) w4[q] = __shfl_sync(0xffffffffu, word, ((threadIdx.x & 31) & ~3) + q);
      if (valid) {  // the same for the four threads of a row's n8 tile
        const u32 vec = smem_u32(smem + off - 4 * t);  // 16-byte aligned start of the 8 channels
        const u32 bar = bar_addr(smem, NSECTIONS + L::INDEX - 1);
#pragma unroll
        for (int q = 0; q < CS / 4; ++q) {
          const u32 r = t * (CS / 4) + q;
          push16(remote_addr(vec, r), w4[0], w4[1], w4[2], w4[3], remote_addr(bar, r));
        }
      }
    }
  }
  if constexpr (L::LAST) {
    // The head, split like the last layer: each CTA takes the max over each image's positions of its
    // channels (the features), multiplies them by its rows of the head, and sends CTA 0 its partial
    // logits; CTA 0 adds them up in a fixed order (see the kernel's end).
    constexpr int NCH = L::NPER * 8;
    float* featmax = (float*)(smem + FEATBUF_OFF) + TPC * 16 * NCH;  // [TPC][NCH], after the rows
    __syncthreads();
    for (int u = threadIdx.x; u < TPC * NCH; u += THREADS) {
      const int j = u / NCH, n_local = u % NCH;
      const float* fb = (const float*)(smem + FEATBUF_OFF) + j * 16 * NCH + n_local;
      float m = -3.0e38f;
#pragma unroll
      for (int p = 0; p < 16; ++p) m = fmaxf(m, fb[p * NCH]);
      featmax[u] = m;
    }
    mbar_wait(bar_addr(smem, NSECTIONS - 1));  // the head's weights
    __syncthreads();
    const unsigned short* head = (const unsigned short*)(smem + HEAD_OFF);  // [features][CLASSES] FP16
    for (int u = threadIdx.x; u < TPC * CLASSES; u += THREADS) {
      const int j = u / CLASSES, cls = u % CLASSES, tile = mp + j * MPARTS;
      if (mp >= MPARTS || tile >= L::MT) continue;
      float partial = 0.f;
      for (int n_local = 0; n_local < NCH; ++n_local) {
        const int n = ng * NCH + n_local;
        if (n < L::COUT) partial = fmaf(featmax[j * NCH + n_local], half_lo(head[n * CLASSES + cls]), partial);
      }
      const u32 slot = smem_u32(smem + FEAT_OFF + 4 * (((tile / L::TPI) * L::NG + ng) * CLASSES + cls));
      push4(remote_addr(slot, 0), partial, remote_addr(bar_addr(smem, NSECTIONS + L::INDEX - 1), 0));
    }
  }
}

template <class L>
DEV void conv_layer(unsigned char* smem, u32 rank, bool first) {
  constexpr int SUBS = L::POOL ? 4 : 1;
  constexpr int MPARTS = CS / L::NG, TPC = (L::MT + MPARTS - 1) / MPARTS;
  constexpr int ITEMS = TPC * L::NBLK * L::KS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int mp = rank / L::NG;
  float* red = (float*)(smem + RED_OFF);
  for (int item = warp; item < ITEMS; item += WARPS) {
    const int ks = item % L::KS, blk = (item / L::KS) % L::NBLK, j = item / (L::KS * L::NBLK);
    const int tile = mp + j * MPARTS;
    if (mp >= MPARTS || tile >= L::MT) continue;
    const int b = tile / L::TPI, y0 = (tile % L::TPI) * L::RPT;
    float acc[SUBS][L::NB][4] = {};
    accumulate<L, SUBS>(smem, j, b, y0, blk, ks * L::KC / L::KS, (ks + 1) * L::KC / L::KS, lane, acc);
#pragma unroll
    for (int s = 0; s < SUBS; ++s)
#pragma unroll
      for (int nb = 0; nb < L::NB; ++nb)
#pragma unroll
        for (int i = 0; i < 4; ++i) red[red_index<L, SUBS>(j, blk, ks, s, nb, i, lane)] = acc[s][nb][i];
  }
  __syncthreads();  // this CTA's reads of the layer's input are done before anyone writes its next one
  if (first) cluster_wait();  // every CTA runs and its barriers exist: pushes may start
  finish<L, SUBS>(smem, rank);
}

DEV void stamp(long long* stamps, u32 rank, int i) {
  if (TIMING && stamps != nullptr && threadIdx.x == 0) stamps[rank * NSTAMPS + i] = (long long)global_ns();
}

// Between two layers: this CTA has pushed its outputs of layer NEXT - 1; the next layer's output
// border is zeroed while that layer's inputs (everyone's outputs) arrive on their barrier, and the
// next layer's weights on theirs.
template <class NEXT>
DEV void handoff(unsigned char* smem, long long* stamps, u32 rank, int i) {
  __syncthreads();  // every warp of this CTA is done with RED and with the buffer zeroed next
  stamp(stamps, rank, i);
  zero_halo<NEXT>(smem);
  mbar_wait(bar_addr(smem, NSECTIONS + NEXT::INDEX - 2));
  mbar_wait(bar_addr(smem, NEXT::INDEX));
  stamp(stamps, rank, i + 1);
}

// ------------------------------------------------------------------ the network

// Generated after this text: load_weights() (one bulk copy per section, in the order the layers
// need them, each on its own barrier) and run_convs() (conv_layer<C1>(.., true), handoff<C2>, ...).
DEV void load_weights(unsigned char* smem, const unsigned char* mine);
DEV void arm_layers(unsigned char* smem, u32 rank);
DEV void run_convs(unsigned char* smem, long long* stamps, u32 rank);

template <int K, int FROM, int TO>
DEV void load_section(unsigned char* smem, const unsigned char* mine) {
  mbar_expect(bar_addr(smem, K), TO - FROM);
  bulk_load(smem_u32(smem + FROM), mine + FROM, TO - FROM, bar_addr(smem, K));
}

// image: one (1, 3, 32, 32) FP16 normalised image (INPUT_KIND 0) or one 32 x 32 x 3 uint8 image
// (INPUT_KIND 1; the normalisation is folded into layer 0), 16-byte aligned. blob: CS per-CTA copies of the weights'
// shared-memory image. logits: (1, CLASSES) FP32, the mirror's two rows averaged. top_class and
// stamps may be null; stamps (TIMING builds) gets CS x NSTAMPS %globaltimer readings in ns.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
fastnet_megakernel(const void* __restrict__ image, const unsigned char* __restrict__ blob,
                   float* __restrict__ logits, int* __restrict__ top_class, long long* __restrict__ stamps) {
  extern __shared__ __align__(128) unsigned char smem[];
  const u32 rank = cluster_rank();
  stamp(stamps, rank, 0);
  if (threadIdx.x == 0) {
    for (int k = 0; k < NSECTIONS + NCONV; ++k) mbar_init(bar_addr(smem, k));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    // barrier 0: the image and layer 0, first in the copy engine's queue; then one per section
    mbar_expect_only(bar_addr(smem, 0), IMG_BYTES);  // section 0's own arrive comes with its bytes
    bulk_load(smem_u32(smem + IMG_OFF), image, IMG_BYTES, bar_addr(smem, 0));
    load_weights(smem, blob + (u64)rank * BLOB_BYTES);
    arm_layers(smem, rank);  // the bytes each convolution's outputs bring to this CTA
  }
  zero_halo<C1>(smem);
  __syncthreads();
  cluster_arrive_relaxed();  // this CTA's barriers exist: others may push once everyone arrived
  mbar_wait(bar_addr(smem, 0));
  stamp(stamps, rank, 1);
  whiten_band<C1>(smem, rank);
  mbar_wait(bar_addr(smem, 1));
  __syncthreads();
  stamp(stamps, rank, 2);
  run_convs(smem, stamps, rank);  // ends when the partial logits reached CTA 0
  cluster_arrive_relaxed();  // no CTA leaves while a push to CTA 0 may be in flight
  if (rank == 0) {
    const float* partials = (const float*)(smem + FEAT_OFF);  // [BATCH][HEAD_PARTS][CLASSES]
    float* scores = (float*)(smem + RED_OFF);
    if (threadIdx.x < CLASSES) {
      const int j = threadIdx.x;
      float s = 0.f;
      for (int k = 0; k < BATCH * HEAD_PARTS; ++k) s += partials[k * CLASSES + j];
      s *= 1.f / BATCH;
      logits[j] = s;
      scores[j] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (top_class != nullptr) {
        int best = 0;
        for (int j = 1; j < CLASSES; ++j) best = scores[j] > scores[best] ? j : best;
        top_class[0] = best;
      }
    }
    stamp(stamps, rank, NSTAMPS - 1);
  }
  cluster_wait();
}
