// What both FastNet kernels share (megakernel.cu: one cluster; grid.cu: every SM): FP16 packing,
// GELU, the tensor-core MMA, mbarriers and the copy engine, the global timer. Placed first in the
// generated text of either kernel.
//
// Self-contained on purpose (no #include): NVRTC compiles it without a CUDA toolkit on the machine,
// and nvcc compiles the same text for the CPU-side check. FP16 conversions are written in PTX.

typedef unsigned int u32;
typedef unsigned long long u64;

#define DEV __device__ __forceinline__

DEV u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Two floats -> one f16x2 word (lo in the low half), round to nearest even.
DEV u32 pack_half2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
DEV float half_lo(u32 v) {
  float f;
  asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l; }" : "=f"(f) : "r"(v));
  return f;
}
DEV float half_hi(u32 v) {
  float f;
  asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "r"(v));
  return f;
}
DEV float round_half(float x) { return half_lo(pack_half2(x, 0.f)); }
// GELU(x) = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, with erfc(z) = t * poly(t) * exp(-z^2),
// t = 1 / (1 + 0.3275911 z) (Abramowitz and Stegun 7.1.26, |error| <= 1.5e-7): two fast special
// functions and five FMAs instead of erff's longer path; the error stays far below FP16's rounding.
DEV float gelu(float x) {
  const float z = fabsf(x) * 0.70710678118654752f;
  const float t = __fdividef(1.f, fmaf(0.3275911f, z, 1.f));
  const float poly = t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, 1.061405429f, -1.453152027f), 1.421413741f),
                                      -0.284496736f), 0.254829592f);
  const float half_erfc = 0.5f * poly * __expf(-z * z);
  return x * (x >= 0.f ? 1.f - half_erfc : half_erfc);
}

DEV void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// mbarriers: a consumer arms its barrier with the bytes it expects; producers' asynchronous stores
// and bulk copies count them down; the phase completes when all arrived. Arming before or after the
// bytes land both work (the count may go below zero). A barrier used once per launch waits on
// parity 0; one reused for several phases alternates 0, 1, 0, ...
DEV void mbar_init(u32 bar) { asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(bar) : "memory"); }
DEV void mbar_expect(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}
DEV void mbar_expect_only(u32 bar, u32 bytes) {  // more bytes for the phase, without arriving
  asm volatile("mbarrier.expect_tx.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}
// A wait that cannot end (bytes never sent: a bug) traps instead of hanging the GPU: the launch
// then fails with an error the host sees.
DEV void mbar_wait(u32 bar, u32 parity = 0) {
  for (u32 tries = 0;; ++tries) {
    u32 done;
    asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                 "selp.u32 %0, 1, 0, p;\n\t}" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    if (done) return;
    if (tries > (1u << 22)) asm volatile("trap;");
  }
}
// global -> this CTA's shared memory by the copy engine, counted on `bar`
DEV void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

DEV u64 global_ns() { u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
