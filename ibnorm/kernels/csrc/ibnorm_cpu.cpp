// IBNorm forward and backward on CPU, one group of values at a time, held in cache:
//  - rows:     last-dimension groups (layer and RMS grouping), one row per group, per-element affine;
//  - channels: batch grouping, one channel over (batch, spatial) per group, per-channel affine, any strides: a
//              channel is gathered into a float buffer and scattered back; dense channels_last instead runs the
//              synchronized path's passes over rows of channels in place (channels_last_forward/backward).
// Math in float32; float32, bfloat16 and float16 in and out: a group is converted into a float buffer, never the
// whole tensor. The transcendentals are polynomials written once with at::vec::Vectorized arithmetic, so every
// vector width torch builds for (AVX2, AVX-512, ...) runs the same code. The math is derived in docs/method.md;
// the op codes and formulas are ibnorm/ops.py's, which tests/test_ops.py checks through op_terms.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <vector>

using Vec = at::vec::Vectorized<float>;
using IVec = at::vec::Vectorized<int32_t>;
constexpr int64_t W = Vec::size();
enum Op : int64_t { POWER = 0, LOG = 1, TANH = 2, NONE = 3 };

// ---- fast float32 transcendentals (Cephes-style polynomials, about 1-3 ulp) ---------------------------------

static inline IVec bits_of(const Vec& v) {  // reinterpret the float lanes as int32 (one instruction, or none)
#if defined(CPU_CAPABILITY_AVX512)
  return IVec(_mm512_castps_si512(__m512(v)));
#elif defined(CPU_CAPABILITY_AVX2)
  return IVec(_mm256_castps_si256(__m256(v)));
#else
  return at::vec::cast<int32_t>(v);
#endif
}

// exp(x) = 2^n e^r with x = n ln2 + r (ln2 split in two for accuracy); e^r by a degree-6 polynomial.
static inline Vec fexp(Vec x) {
  x = at::vec::minimum(at::vec::maximum(x, Vec(-87.3f)), Vec(88.3f));
  const Vec fx = (x * Vec(1.44269504088896341f)).round();
  x = at::vec::fmadd(fx, Vec(-0.693359375f), x);
  x = at::vec::fmadd(fx, Vec(2.12194440e-4f), x);
  Vec y(1.9875691500E-4f);
  y = at::vec::fmadd(y, x, Vec(1.3981999507E-3f));
  y = at::vec::fmadd(y, x, Vec(8.3334519073E-3f));
  y = at::vec::fmadd(y, x, Vec(4.1665795894E-2f));
  y = at::vec::fmadd(y, x, Vec(1.6666665459E-1f));
  y = at::vec::fmadd(y, x, Vec(5.0000001201E-1f));
  y = at::vec::fmadd(y, x * x, x + Vec(1.f));
  const IVec e = (at::vec::convert_to_int_of_same_size(fx) + IVec(127)) << IVec(23);
  return y * at::vec::cast<float>(e);
}

// log(x) for x >= 1 (the argument is always 1 + something >= 0 here): exponent and mantissa from the bits,
// degree-8 polynomial on the mantissa.
static inline Vec flog_ge1(Vec x) {
  const IVec bits = bits_of(x);
  Vec e = at::vec::convert_to_fp_of_same_size<float>((bits >> IVec(23)) - IVec(126));
  x = at::vec::cast<float>((bits & IVec(0x007fffff)) | IVec(0x3f000000));  // mantissa in [0.5, 1)
  const Vec small = x < Vec(0.707106781186547524f);
  e = e - (Vec(1.f) & small);
  x = x - Vec(1.f) + (x & small);
  const Vec z = x * x;
  Vec y(7.0376836292E-2f);
  y = at::vec::fmadd(y, x, Vec(-1.1514610310E-1f));
  y = at::vec::fmadd(y, x, Vec(1.1676998740E-1f));
  y = at::vec::fmadd(y, x, Vec(-1.2420140846E-1f));
  y = at::vec::fmadd(y, x, Vec(1.4249322787E-1f));
  y = at::vec::fmadd(y, x, Vec(-1.6668057665E-1f));
  y = at::vec::fmadd(y, x, Vec(2.0000714765E-1f));
  y = at::vec::fmadd(y, x, Vec(-2.4999993993E-1f));
  y = at::vec::fmadd(y, x, Vec(3.3333331174E-1f));
  y = y * x * z;
  y = at::vec::fmadd(e, Vec(-2.12194440e-4f), y);
  y = at::vec::fmadd(z, Vec(-0.5f), y);
  return at::vec::fmadd(e, Vec(0.693359375f), x + y);
}

// log1p(a), a >= 0, as log(1 + a): its absolute error stays at float rounding of 1 + a (about 6e-8), which is what
// matters here: s(u) is standardized next, so values near 0 need no relative accuracy, and there is no division.
static inline Vec flog1p(const Vec& a) { return flog_ge1(Vec(1.f) + a); }

// x * sign(u) by flipping x's sign bit where u's is set (u = -0 counts as negative, as in copysign; for x >= 0 this is
// copysign(x, u)). ATen's copysign is an out-of-line Sleef call on AVX-512, which spills every live vector register.
static inline Vec times_sign_of(const Vec& x, const Vec& u) { return x ^ (u & Vec(-0.f)); }

// tanh(y) = 1 - 2 / (e^2a + 1), odd. Near 0 its error is absolute (float rounding of 1, about 6e-8), which is what
// s = tanh(lam u) / lam needs at a moderate strength; a small one divides it by lam, and takes the series there.
static inline Vec ftanh(const Vec& y) {
  const Vec a = y.abs();
  return times_sign_of(Vec(1.f) - Vec(2.f) / (fexp(a + a) + Vec(1.f)), y);
}

// Taylor series for |z| < kSeriesBelow (the next term is below 1e-11 there): tanh, expm1 and log1p, whose fast forms
// above have an absolute error near 0 that a small strength would divide by lam.
constexpr float kSeriesBelow = 0.05f;
static inline Vec tanh_series(const Vec& z) {
  const Vec z2 = z * z;
  return z * (Vec(1.f) + z2 * (Vec(-1.f / 3) + z2 * (Vec(2.f / 15) + z2 * Vec(-17.f / 315))));
}
static inline Vec expm1_series(const Vec& z) {
  return z * (Vec(1.f) + z * (Vec(1.f / 2) + z * (Vec(1.f / 6) + z * (Vec(1.f / 24) + z * (Vec(1.f / 120) + z * Vec(1.f / 720))))));
}
static inline Vec log1p_series(const Vec& z) {
  return z * (Vec(1.f) + z * (Vec(-1.f / 2) + z * (Vec(1.f / 3) + z * (Vec(-1.f / 4) + z * (Vec(1.f / 5) + z * (Vec(-1.f / 6) + z * Vec(1.f / 7)))))));
}
// Below this strength, s takes the series near 0; above it the fast forms' absolute error (about 6e-8) over lam
// stays under 3e-7, and the series, a blend of both forms, is not paid for.
constexpr float kPreciseBelow = 0.25f;

// ---- the ops: s(u), s'(u), ds/dlam(u) (ibnorm/ops.py) ---------------------------------------------------------

// One instantiation per op (OP is a template argument), so that the loops below inline it and branch on nothing.
template <int64_t OP>
__attribute__((always_inline)) static inline void terms(const Vec& u, float lam, bool need_ds, bool need_dl, Vec& s,
                                                        Vec& ds, Vec& dl) {
  const Vec one(1.f), vl(lam), inv(1.f / lam), inv2(1.f / (lam * lam));
  if constexpr (OP == NONE) {
    s = u; ds = one; dl = Vec(0.f);
  } else if constexpr (OP == TANH) {
    const Vec z = vl * u;
    Vec t = ftanh(z);
    if (lam < kPreciseBelow) t = Vec::blendv(t, tanh_series(z), z.abs() < Vec(kSeriesBelow));
    s = t * inv;
    if (need_ds || need_dl) ds = one - t * t;
    if (need_dl) dl = u * ds * inv - t * inv2;  // cancels near 0, but it is only ever summed over the group
  } else if constexpr (OP == POWER) {
    // ((1 + a)^lam - 1) / lam = expm1(t) / lam, t = lam log1p(a): log1p's absolute error passes through unscaled.
    const Vec a = u.abs();
    const Vec L = flog1p(a), t = vl * L, e = fexp(t);
    Vec em1 = e - one;
    if (lam < kPreciseBelow) em1 = Vec::blendv(em1, expm1_series(t), t < Vec(kSeriesBelow));
    s = times_sign_of(em1 * inv, u);
    if (need_ds || need_dl) ds = e / (one + a);
    if (need_dl) dl = times_sign_of(L * e * inv - em1 * inv2, u);  // may be < 0; summed only, as for tanh
  } else {
    const Vec a = u.abs();
    const Vec la = vl * a;
    Vec lq = flog1p(la);
    if (lam < kPreciseBelow) lq = Vec::blendv(lq, log1p_series(la), la < Vec(kSeriesBelow));
    s = times_sign_of(lq * inv, u);
    if (need_ds || need_dl) ds = one / (one + la);
    if (need_dl) dl = times_sign_of(a * ds * inv - lq * inv2, u);
  }
}

// Calls f(std::integral_constant<int64_t, OP>{}) for the runtime op code.
template <typename F>
static inline void with_op(int64_t op, F&& f) {
  switch (op) {
    case POWER: f(std::integral_constant<int64_t, POWER>{}); break;
    case LOG: f(std::integral_constant<int64_t, LOG>{}); break;
    case TANH: f(std::integral_constant<int64_t, TANH>{}); break;
    case NONE: f(std::integral_constant<int64_t, NONE>{}); break;
    default: TORCH_CHECK(false, "ibnorm: unknown op code ", op);
  }
}

static inline double hsum(const Vec& v) {  // horizontal sum by shuffles (per-row sums of short rows add up)
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// ---- one group ----------------------------------------------------------------------------------------------

struct Cfg {
  int64_t op;
  float lam, eps;
  bool centered, cts;  // cts: compress then standardize (step 3); else stop after step 2
};

// The affine map of one group: per-element arrays (rows) or one weight and bias for the whole group (channels).
struct Affine {
  const float* w = nullptr;
  const float* b = nullptr;
  bool per_element = true;
  float ws = 1.f, bs = 0.f;
  bool has_w = false, has_b = false;
  inline Vec wv(int64_t j, int64_t n) const { return per_element ? Vec::loadu(w + j, n) : Vec(ws); }
  inline Vec bv(int64_t j, int64_t n) const { return per_element ? Vec::loadu(b + j, n) : Vec(bs); }
};

struct Stats { float mu, r, var, m_c, v_c, v_u; };

// y = w z + b for one group of M values in xr (float). yr must not alias xr. Evaluates s(u) once per element.
template <int64_t OP>
static Stats group_forward_op(const float* xr, float* yr, int64_t M, const Affine af, const Cfg c) {
  const int64_t vend = M - M % W;
  double mu = 0;
  if (c.centered) {  // step 1: statistics in two passes over the cached group
    Vec acc(0.f);
    for (int64_t j = 0; j < vend; j += W) acc = acc + Vec::loadu(xr + j);
    mu = hsum(acc);
    for (int64_t j = vend; j < M; ++j) mu += xr[j];
    mu /= M;
  }
  const float muf = static_cast<float>(mu);
  Vec acc2(0.f);
  const Vec vmu(muf);
  for (int64_t j = 0; j < vend; j += W) { Vec d = Vec::loadu(xr + j) - vmu; acc2 = acc2 + d * d; }
  double var = hsum(acc2);
  for (int64_t j = vend; j < M; ++j) { float d = xr[j] - muf; var += d * d; }
  var /= M;
  if (!std::isfinite(var)) {  // squares past float's range (|x| ~ 1e19): the same mean, scaled by the largest deviation
    float big = 0.f;
    for (int64_t j = 0; j < M; ++j) big = std::max(big, std::fabs(xr[j] - muf));
    double sum = 0;
    for (int64_t j = 0; j < M; ++j) { const double d = (xr[j] - muf) / big; sum += d * d; }
    var = sum / M * big * big;
  }
  const float r = 1.f / std::sqrt(static_cast<float>(var) + c.eps);
  const Vec vr(r);
  Stats st{muf, r, static_cast<float>(var), 0.f, 0.f, static_cast<float>(var) * r * r};
  if (c.op == NONE || !c.cts) {  // z = u, or z = s(u); then the affine map
    for (int64_t j = 0; j < M; j += W) {
      const int64_t n = std::min<int64_t>(W, M - j);
      Vec u = (Vec::loadu(xr + j, n) - vmu) * vr, z, ds, dl;
      terms<OP>(u, c.lam, false, false, z, ds, dl);
      if (af.has_w) z = z * af.wv(j, n);
      if (af.has_b) z = z + af.bv(j, n);
      z.store(yr + j, n);
    }
    return st;
  }
  // Steps 2-3: c = s(u) into y, its moments, then z = (c - m_c) k and the affine map.
  Vec sc(0.f), sc2(0.f);
  for (int64_t j = 0; j < M; j += W) {
    const int64_t n = std::min<int64_t>(W, M - j);
    Vec u = (Vec::loadu(xr + j, n) - vmu) * vr, cc, ds, dl;
    terms<OP>(u, c.lam, false, false, cc, ds, dl);
    cc.store(yr + j, n);
    if (n < W) cc = Vec::loadu(yr + j, n);  // zero the lanes past the group's end
    sc = sc + cc;
    sc2 = sc2 + cc * cc;
  }
  const double mc = c.centered ? hsum(sc) / M : 0.0;
  const double vc = std::max(hsum(sc2) / M - mc * mc, 0.0);
  st.m_c = static_cast<float>(mc);
  st.v_c = static_cast<float>(vc);
  const float k = std::sqrt((st.v_u + c.eps) / (st.v_c + c.eps));
  const Vec vmc(st.m_c), vk(k);
  for (int64_t j = 0; j < M; j += W) {
    const int64_t n = std::min<int64_t>(W, M - j);
    Vec z = (Vec::loadu(yr + j, n) - vmc) * vk;
    if (af.has_w) z = z * af.wv(j, n);
    if (af.has_b) z = z + af.bv(j, n);
    z.store(yr + j, n);
  }
  return st;
}

static Stats group_forward(const float* xr, float* yr, int64_t M, const Affine& af, const Cfg& c) {
  Stats st;
  with_op(c.op, [&](auto o) { st = group_forward_op<decltype(o)::value>(xr, yr, M, af, c); });
  return st;
}

// Per-thread scratch of the backward: g_u, c, s', ds/dlam of one group.
struct Scratch {
  std::vector<float> gu, c, ds, dl;
  void fit(int64_t M) {
    if (static_cast<int64_t>(gu.size()) < M) { gu.resize(M); c.resize(M); ds.resize(M); dl.resize(M); }
  }
};

// What the backward of one group adds to the parameter gradients.
struct Grads {
  float* dw = nullptr;  // per-element accumulators (rows), or nullptr
  float* db = nullptr;
  double dw_s = 0, db_s = 0, dl = 0;  // per-group sums (channels) and the strength's gradient
};

// gxr = dL/dx of one group from gr = dL/dy, recomputing u, s(u) (once per element) and step 3's statistics.
template <int64_t OP>
static void group_backward_op(const float* xr, const float* gr, float* gxr, int64_t M, float mu, float r,
                           const Affine af, const Cfg c, bool need_dw, bool need_db, bool need_dl,
                           Grads& out, Scratch& buf) {
  buf.fit(M);
  const Vec vmu(mu), vr(r);
  const bool standardize = c.op != NONE && c.cts;
  const bool need_dl_k = need_dl && c.op != NONE;
  Vec aSU(0.f), aSUU(0.f), aDL(0.f), aC(0.f), aCC(0.f), aGZ(0.f), aGZC(0.f), aDW(0.f), aDB(0.f), aUU(0.f);
  // Pass A: u, s, s', ds/dlam; g_u directly when there is no step 3, else the sums step 3's gradient needs.
  for (int64_t j = 0; j < M; j += W) {
    const int64_t n = std::min<int64_t>(W, M - j);
    const Vec u = (Vec::loadu(xr + j, n) - vmu) * vr;
    const Vec g = Vec::loadu(gr + j, n);  // zero past the end, so every sum below ignores those lanes
    const Vec gz = af.has_w ? g * af.wv(j, n) : g;
    Vec cc, ds, dlv(0.f);
    terms<OP>(u, c.lam, true, need_dl_k, cc, ds, dlv);
    if (!standardize) {
      const Vec gu = gz * ds;
      gu.store(buf.gu.data() + j, n);
      aSU = aSU + gu;
      aSUU = aSUU + gu * u;
      if (need_dl_k) aDL = aDL + gz * dlv;
      if (need_dw) {
        if (af.per_element) (Vec::loadu(out.dw + j, n) + g * cc).store(out.dw + j, n);
        else aDW = aDW + g * cc;
      }
    } else {
      cc.store(buf.c.data() + j, n);
      ds.store(buf.ds.data() + j, n);
      if (need_dl_k) dlv.store(buf.dl.data() + j, n);
      gz.store(buf.gu.data() + j, n);
      Vec uu = u * u;
      if (n < W) {  // zero the lanes past the group's end
        cc = Vec::loadu(buf.c.data() + j, n);
        float tmp[W];
        uu.store(tmp, n);
        uu = Vec::loadu(tmp, n);
      }
      aUU = aUU + uu;
      aC = aC + cc;
      aCC = aCC + cc * cc;
      aGZ = aGZ + gz;
      aGZC = aGZC + gz * cc;
    }
    if (need_db) {
      if (af.per_element) (Vec::loadu(out.db + j, n) + g).store(out.db + j, n);
      else aDB = aDB + g;
    }
  }
  if (standardize) {
    // Step 3's statistics, recomputed: m_c and v_c from c, v_u = mean(u^2) (the data form of var(u)).
    const double m_c = c.centered ? hsum(aC) / M : 0.0;
    const double v_c = std::max(hsum(aCC) / M - m_c * m_c, 0.0);
    const double v_u = hsum(aUU) / M;
    const double k = std::sqrt((v_u + c.eps) / (v_c + c.eps));
    const double G1 = c.centered ? hsum(aGZ) / M : 0.0;
    const double G2 = hsum(aGZC) / M - m_c * G1;
    const Vec vG1(static_cast<float>(G1)), vk(static_cast<float>(k)), vmc(static_cast<float>(m_c)),
        kc(static_cast<float>(k * G2 / (v_c + c.eps))), ku(static_cast<float>(k * G2 / (v_u + c.eps)));
    // Pass B: z for the weight gradient, g_c, g_u and their sums.
    Vec adl(0.f);
    for (int64_t j = 0; j < M; j += W) {
      const int64_t n = std::min<int64_t>(W, M - j);
      const Vec u = (Vec::loadu(xr + j, n) - vmu) * vr;
      const Vec gz = Vec::loadu(buf.gu.data() + j, n);
      const Vec d = Vec::loadu(buf.c.data() + j, n) - vmc;
      if (need_dw) {
        const Vec gdz = Vec::loadu(gr + j, n) * d * vk;
        if (af.per_element) (Vec::loadu(out.dw + j, n) + gdz).store(out.dw + j, n);
        else aDW = aDW + gdz;
      }
      const Vec gc = (gz - vG1) * vk - kc * d;
      Vec gu = gc * Vec::loadu(buf.ds.data() + j, n) + ku * u;
      if (need_dl_k) adl = adl + gc * Vec::loadu(buf.dl.data() + j, n);
      gu.store(buf.gu.data() + j, n);
      if (n < W) gu = Vec::loadu(buf.gu.data() + j, n);  // zero the lanes past the group's end
      aSU = aSU + gu;
      aSUU = aSUU + gu * u;
    }
    if (need_dl_k) out.dl += hsum(adl);
  } else if (need_dl_k) {
    out.dl += hsum(aDL);
  }
  if (!af.per_element) {
    out.dw_s += hsum(aDW);
    out.db_s += hsum(aDB);
  }
  const double SU = c.centered ? hsum(aSU) / M : 0.0;
  const double SUU = hsum(aSUU) / M;
  const Vec vSU(static_cast<float>(SU)), vSUU(static_cast<float>(SUU));
  // Pass C: the LayerNorm (RMSNorm) backward through u.
  for (int64_t j = 0; j < M; j += W) {
    const int64_t n = std::min<int64_t>(W, M - j);
    const Vec u = (Vec::loadu(xr + j, n) - vmu) * vr;
    const Vec gu = Vec::loadu(buf.gu.data() + j, n);
    ((gu - vSU - u * vSUU) * vr).store(gxr + j, n);
  }
}

static void group_backward(const float* xr, const float* gr, float* gxr, int64_t M, float mu, float r,
                           const Affine& af, const Cfg& c, bool need_dw, bool need_db, bool need_dl, Grads& out,
                           Scratch& buf) {
  with_op(c.op, [&](auto o) {
    group_backward_op<decltype(o)::value>(xr, gr, gxr, M, mu, r, af, c, need_dw, need_db, need_dl, out, buf);
  });
}

// ---- layout: dtype conversion and gathering of one group into float buffers ----------------------------------

template <typename T>
static inline void load_float(const T* src, float* dst, int64_t n) { at::vec::convert(src, dst, n); }
template <typename T>
static inline void store_float(const float* src, T* dst, int64_t n) { at::vec::convert(src, dst, n); }

static Cfg make_cfg(int64_t op, const c10::optional<at::Tensor>& lam_t, double lam, bool centered, bool cts,
                    double eps) {
  // A learned strength arrives as a 0-d tensor and is read here, inside the op, never in Python.
  const float l = lam_t.has_value() ? lam_t->to(at::kFloat).item<float>() : static_cast<float>(lam);
  return Cfg{op, l, static_cast<float>(eps), centered, cts};
}

static const float* opt_ptr(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "weight and bias must be contiguous float32");
  return t->data_ptr<float>();
}

// Calls f(scalar_t{}) for the dtypes the kernels take; f is a generic lambda, so `if constexpr` prunes per dtype.
template <typename F>
static void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    case at::kHalf: f(at::Half{}); break;
    default: TORCH_CHECK(false, "ibnorm's CPU kernel takes float32, bfloat16 or float16; got ", t);
  }
}

// ---- rows: x [R, M] contiguous; y like x; stats [R, 2] = (mean, rstd): what nn.LayerNorm saves -----------------
// weight and bias are [M] (layer, RMS grouping) or [P, M] with row i using row i % P (group grouping, whose
// per-channel affine repeats over the spatial positions of each group).

static int64_t affine_rows(const c10::optional<at::Tensor>& t, int64_t M) {
  if (!t.has_value()) return 1;
  TORCH_CHECK(t->numel() % M == 0, "weight and bias must have a multiple of M elements");
  return t->numel() / M;
}

std::vector<at::Tensor> rows_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& lam_t,
                                     double lam, int64_t op, bool centered, bool cts, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be contiguous [R, M]");
  const int64_t R = x.size(0), M = x.size(1);
  auto y = at::empty_like(x);
  auto stats = at::empty({R, 2}, x.options().dtype(at::kFloat));
  const float* Wp = opt_ptr(weight);
  const float* Bp = opt_ptr(bias);
  const int64_t P = affine_rows(weight.has_value() ? weight : bias, M);
  const Cfg c = make_cfg(op, lam_t, lam, centered, cts, eps);
  float* S = stats.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t* Y = y.data_ptr<scalar_t>();
    at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> xbuf, ybuf(M);
      if (!std::is_same<scalar_t, float>::value) xbuf.resize(M);
      for (int64_t i = begin; i < end; ++i) {
        const float* xr;
        if constexpr (std::is_same<scalar_t, float>::value) xr = X + i * M;
        else { load_float(X + i * M, xbuf.data(), M); xr = xbuf.data(); }
        float* yr = std::is_same<scalar_t, float>::value ? reinterpret_cast<float*>(Y + i * M) : ybuf.data();
        Affine af;
        af.w = Wp ? Wp + (i % P) * M : nullptr; af.b = Bp ? Bp + (i % P) * M : nullptr;
        af.has_w = Wp != nullptr; af.has_b = Bp != nullptr;
        const Stats st = group_forward(xr, yr, M, af, c);
        if constexpr (!std::is_same<scalar_t, float>::value) store_float(ybuf.data(), Y + i * M, M);
        S[i * 2] = st.mu;
        S[i * 2 + 1] = st.r;
      }
    });
  });
  return {y, stats};
}

// gx like x; gw, gb [M] float32 (or undefined); glam 0-d float32.
std::vector<at::Tensor> rows_backward(const at::Tensor& gy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                      const at::Tensor& stats, const c10::optional<at::Tensor>& lam_t, double lam,
                                      int64_t op, bool centered, bool cts, double eps, bool need_dw, bool need_db,
                                      bool need_dl, int64_t affine_rows_db) {
  TORCH_CHECK(gy.is_contiguous() && x.is_contiguous() && gy.scalar_type() == x.scalar_type(),
              "gy and x must be contiguous, of one dtype");
  const int64_t R = x.size(0), M = x.size(1);
  auto gx = at::empty_like(x);
  const int nthreads = at::get_num_threads();
  const float* Wp = opt_ptr(weight);
  const int64_t P = affine_rows(weight.has_value() ? weight : c10::optional<at::Tensor>(), M);
  const int64_t PB = need_db ? std::max<int64_t>(P, affine_rows_db) : P;
  auto fopt = x.options().dtype(at::kFloat);
  auto dw_part = at::zeros({nthreads, P * M}, fopt), db_part = at::zeros({nthreads, PB * M}, fopt);
  auto dl_part = at::zeros({nthreads}, x.options().dtype(at::kDouble));
  const Cfg c = make_cfg(op, lam_t, lam, centered, cts, eps);
  const float* S = stats.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* G = gy.data_ptr<scalar_t>();
    scalar_t* GX = gx.data_ptr<scalar_t>();
    at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
      const int tid = at::get_thread_num();
      float* dw_t = dw_part.data_ptr<float>() + tid * P * M;
      float* db_t = db_part.data_ptr<float>() + tid * PB * M;
      Grads out;
      Scratch buf;
      constexpr bool is_float = std::is_same<scalar_t, float>::value;
      std::vector<float> xbuf(is_float ? 0 : M), gbuf(is_float ? 0 : M), gxbuf(is_float ? 0 : M);
      for (int64_t i = begin; i < end; ++i) {
        const float *xr, *gr;
        float* gxr;
        if constexpr (is_float) {
          xr = X + i * M; gr = G + i * M; gxr = reinterpret_cast<float*>(GX + i * M);
        } else {
          load_float(X + i * M, xbuf.data(), M); load_float(G + i * M, gbuf.data(), M);
          xr = xbuf.data(); gr = gbuf.data(); gxr = gxbuf.data();
        }
        Affine af;
        af.w = Wp ? Wp + (i % P) * M : nullptr;
        af.has_w = Wp != nullptr;
        out.dw = dw_t + (i % P) * M;
        out.db = db_t + (i % PB) * M;
        group_backward(xr, gr, gxr, M, S[i * 2], S[i * 2 + 1], af, c, need_dw, need_db, need_dl, out, buf);
        if constexpr (!is_float) store_float(gxbuf.data(), GX + i * M, M);
      }
      dl_part.data_ptr<double>()[tid] += out.dl;
    });
  });
  at::Tensor gw = need_dw ? dw_part.sum(0).reshape({P, M}) : at::Tensor();
  at::Tensor gb = need_db ? db_part.sum(0).reshape({PB, M}) : at::Tensor();
  return {gx, gw, gb, dl_part.sum().to(at::kFloat)};
}

// ---- channels: x [N, C, S] with any strides; y with x's strides; stats [C, 6] ----------------------------------
// stats columns: mean(x), rstd, var(x) (biased), mean(c), var(c), var(u): the running statistics' sources.

// Channel-minor layouts (channels_last: stride 1 along C) gather a block of B channels in one pass over the tensor,
// reading each cache line once: row i = (n, s) holds the block's B values side by side.
constexpr int64_t CB = 16;

// 16x16 tiles are transposed in registers (at::vec::transpose_mxn), the ragged edge element by element.
template <typename T>
static void gather_block(const T* X, const at::IntArrayRef st, int64_t c0, int64_t B, int64_t N, int64_t S,
                         float* dst, int64_t M) {
  float tile[CB * CB];
  for (int64_t n = 0; n < N; ++n) {
    int64_t s = 0;
    if (B == CB) {
      for (; s + CB <= S; s += CB) {
        const T* src = X + n * st[0] + s * st[2] + c0;
        float* d = dst + n * S + s;
        if constexpr (std::is_same<T, float>::value) {
          at::vec::transpose_mxn<float, 16, 16>(src, st[2], d, M);
        } else {
          for (int64_t r = 0; r < CB; ++r) load_float(src + r * st[2], tile + r * CB, CB);
          at::vec::transpose_mxn<float, 16, 16>(tile, CB, d, M);
        }
      }
    }
    for (; s < S; ++s) {
      const T* src = X + n * st[0] + s * st[2] + c0;
      for (int64_t b = 0; b < B; ++b) dst[b * M + n * S + s] = static_cast<float>(src[b]);
    }
  }
}

template <typename T>
static void scatter_block(const float* src, T* Y, const at::IntArrayRef st, int64_t c0, int64_t B, int64_t N,
                          int64_t S, int64_t M) {
  float tile[CB * CB];
  for (int64_t n = 0; n < N; ++n) {
    int64_t s = 0;
    if (B == CB) {
      for (; s + CB <= S; s += CB) {
        const float* sp = src + n * S + s;
        T* d = Y + n * st[0] + s * st[2] + c0;
        if constexpr (std::is_same<T, float>::value) {
          at::vec::transpose_mxn<float, 16, 16>(sp, M, d, st[2]);
        } else {
          at::vec::transpose_mxn<float, 16, 16>(sp, M, tile, CB);
          for (int64_t r = 0; r < CB; ++r) store_float(tile + r * CB, d + r * st[2], CB);
        }
      }
    }
    for (; s < S; ++s) {
      T* d = Y + n * st[0] + s * st[2] + c0;
      for (int64_t b = 0; b < B; ++b) d[b] = static_cast<T>(src[b * M + n * S + s]);
    }
  }
}

template <typename T>
static void gather_channel(const T* X, const at::IntArrayRef st, int64_t ch, int64_t N, int64_t S, float* dst) {
  for (int64_t n = 0; n < N; ++n) {
    const T* src = X + n * st[0] + ch * st[1];
    float* d = dst + n * S;
    if (st[2] == 1) load_float(src, d, S);
    else for (int64_t s = 0; s < S; ++s) d[s] = static_cast<float>(src[s * st[2]]);
  }
}

template <typename T>
static void scatter_channel(const float* src, T* Y, const at::IntArrayRef st, int64_t ch, int64_t N, int64_t S) {
  for (int64_t n = 0; n < N; ++n) {
    T* dst = Y + n * st[0] + ch * st[1];
    const float* s_ = src + n * S;
    if (st[2] == 1) store_float(s_, dst, S);
    else for (int64_t s = 0; s < S; ++s) dst[s * st[2]] = static_cast<T>(s_[s]);
  }
}

// Channels per block: several when C is the innermost dimension (a block of buffers up to 4 MiB each), else one.
static int64_t channel_block(const at::Tensor& x, int64_t M) {
  if (x.stride(1) != 1 || x.size(1) == 1) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(CB, (int64_t(1) << 20) / std::max<int64_t>(M, 1)));
}

template <typename T>
static void gather(const T* X, const at::IntArrayRef st, int64_t c0, int64_t nb, int64_t N, int64_t S, float* dst,
                   int64_t M) {
  if (st[1] == 1 && nb > 1) gather_block(X, st, c0, nb, N, S, dst, M);
  else for (int64_t b = 0; b < nb; ++b) gather_channel(X, st, c0 + b, N, S, dst + b * M);
}

template <typename T>
static void scatter(const float* src, T* Y, const at::IntArrayRef st, int64_t c0, int64_t nb, int64_t N, int64_t S,
                    int64_t M) {
  if (st[1] == 1 && nb > 1) scatter_block(src, Y, st, c0, nb, N, S, M);
  else for (int64_t b = 0; b < nb; ++b) scatter_channel(src + b * M, Y, st, c0 + b, N, S);
}

template <typename T>
static bool channels_last_forward(const T* X, T* Y, int64_t R, int64_t C, const float* Wp, const float* Bp,
                                  const Cfg& c, float* ST);
template <typename T>
static void channels_last_backward(const T* X, const T* G, T* GX, int64_t R, int64_t C, const float* Wp,
                                   const float* ST, const Cfg& c, float* GW, float* GB, double& dl);
static bool dense_channels_last(const at::Tensor& x);

std::vector<at::Tensor> channels_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& lam_t,
                                         double lam, int64_t op, bool cts, double eps) {
  TORCH_CHECK(x.dim() == 3, "x must be [N, C, S]");
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2), M = N * S;
  auto y = at::empty_like(x);
  TORCH_CHECK(y.strides() == x.strides(), "x must be dense (empty_like must keep its strides)");
  auto stats = at::empty({C, 6}, x.options().dtype(at::kFloat));
  const float* Wp = opt_ptr(weight);
  const float* Bp = opt_ptr(bias);
  const Cfg c = make_cfg(op, lam_t, lam, true, cts, eps);
  float* ST = stats.data_ptr<float>();
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t* Y = y.data_ptr<scalar_t>();
    if (dense_channels_last(x) && channels_last_forward<scalar_t>(X, Y, M, C, Wp, Bp, c, ST)) return;
    const int64_t B = channel_block(x, M);
    at::parallel_for(0, (C + B - 1) / B, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xbuf(B * M), ybuf(B * M);
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t c0 = blk * B, nb = std::min(B, C - c0);
        gather(X, x.strides(), c0, nb, N, S, xbuf.data(), M);
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t ch = c0 + b;
          Affine af;
          af.per_element = false;
          af.has_w = Wp != nullptr; af.has_b = Bp != nullptr;
          af.ws = Wp ? Wp[ch] : 1.f; af.bs = Bp ? Bp[ch] : 0.f;
          const Stats st = group_forward(xbuf.data() + b * M, ybuf.data() + b * M, M, af, c);
          float* o = ST + ch * 6;
          o[0] = st.mu; o[1] = st.r; o[2] = st.var; o[3] = st.m_c; o[4] = st.v_c; o[5] = st.v_u;
        }
        scatter(ybuf.data(), Y, y.strides(), c0, nb, N, S, M);
      }
    });
  });
  return {y, stats};
}

// gx with x's strides; gw, gb [C] float32 (or undefined); glam 0-d float32.
std::vector<at::Tensor> channels_backward(const at::Tensor& gy, const at::Tensor& x,
                                          const c10::optional<at::Tensor>& weight, const at::Tensor& stats,
                                          const c10::optional<at::Tensor>& lam_t, double lam, int64_t op, bool cts,
                                          double eps, bool need_dw, bool need_db, bool need_dl) {
  TORCH_CHECK(x.dim() == 3 && gy.sizes() == x.sizes() && gy.scalar_type() == x.scalar_type(),
              "gy and x must be [N, C, S] of one dtype");
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2), M = N * S;
  auto gx = at::empty_like(x);
  auto fopt = x.options().dtype(at::kFloat);
  auto gw = at::zeros({C}, fopt), gb = at::zeros({C}, fopt);
  const int nthreads = at::get_num_threads();
  auto dl_part = at::zeros({nthreads}, x.options().dtype(at::kDouble));
  const float* Wp = opt_ptr(weight);
  const Cfg c = make_cfg(op, lam_t, lam, true, cts, eps);
  const float* ST = stats.data_ptr<float>();
  float *GW = gw.data_ptr<float>(), *GB = gb.data_ptr<float>();
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* G = gy.data_ptr<scalar_t>();
    scalar_t* GX = gx.data_ptr<scalar_t>();
    if (dense_channels_last(x)) {
      // the passes read gy in x's layout
      const at::Tensor g = gy.strides() == x.strides() ? gy : at::empty_like(x).copy_(gy);
      double dl = 0;
      channels_last_backward<scalar_t>(X, g.data_ptr<scalar_t>(), GX, M, C, Wp, ST, c, GW, GB, dl);
      dl_part.data_ptr<double>()[0] = dl;
      return;
    }
    const int64_t B = channel_block(x, M);
    at::parallel_for(0, (C + B - 1) / B, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xbuf(B * M), gbuf(B * M), gxbuf(B * M);
      Scratch buf;
      double dl = 0;
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t c0 = blk * B, nb = std::min(B, C - c0);
        gather(X, x.strides(), c0, nb, N, S, xbuf.data(), M);
        gather(G, gy.strides(), c0, nb, N, S, gbuf.data(), M);
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t ch = c0 + b;
          Affine af;
          af.per_element = false;
          af.has_w = Wp != nullptr;
          af.ws = Wp ? Wp[ch] : 1.f;
          Grads out;
          group_backward(xbuf.data() + b * M, gbuf.data() + b * M, gxbuf.data() + b * M, M, ST[ch * 6],
                         ST[ch * 6 + 1], af, c, need_dw, need_db, need_dl, out, buf);
          GW[ch] = static_cast<float>(out.dw_s);
          GB[ch] = static_cast<float>(out.db_s);
          dl += out.dl;
        }
        scatter(gxbuf.data(), GX, gx.strides(), c0, nb, N, S, M);
      }
      dl_part.data_ptr<double>()[at::get_thread_num()] += dl;
    });
  });
  return {gx, need_dw ? gw : at::Tensor(), need_db ? gb : at::Tensor(), dl_part.sum().to(at::kFloat)};
}

// ---- synchronized batch grouping: passes with the statistics given ---------------------------------------------
// IBSyncBatchNorm's statistics are sums over processes, so its forward and backward are split into passes over the
// channels with an all-reduce between them (ibnorm/kernels/cpu.py, SyncChannels). P [C, 9] float holds, per
// channel, what the earlier passes found: mu, r, m_c, k, G1, kc, ku, SU, SUU (docs/method.md names them).
// Modes: 0: sums c, c^2, u^2 (step 3's statistics); 1: y; 2: sums gz, gz*c, g*z, g; 3: sums gu, gu*u, gc*dlam;
// 4: gx. `standardize`: step 3 runs (an op with a strength, compress then standardize).
enum SyncMode : int64_t { FWD_SUMS = 0, FWD_APPLY = 1, BWD_SUMS_A = 2, BWD_SUMS_B = 3, BWD_DX = 4 };

// The per-channel values of P as vectors: one channel broadcast (gathered channels), or W channels side by side
// (channels_last rows).
struct SyncVecs {
  Vec mu, r, mc, k, G1, kc, ku, SU, SUU, w, b;
};

// One vector of elements of one pass: its output (modes 1, 4) or its contributions to the four sums. `cached`: the
// previous pass left c (before mode 1) or g_u (before mode 4) in `out`, so this pass evaluates no transcendental;
// modes 0 and 3 always leave c and g_u in `out`.
template <int64_t OP>
__attribute__((always_inline)) static inline void sync_lanes(int64_t mode, const SyncVecs& p, bool has_w, bool has_b,
                                                             float lam, bool standardize, const Vec& x, const Vec& g,
                                                             Vec& out, Vec& s0, Vec& s1, Vec& s2, Vec& s3,
                                                             bool cached = false) {
  const bool need_ds = mode >= BWD_SUMS_B, need_dl = mode == BWD_SUMS_B && OP != NONE;
  const Vec u = (x - p.mu) * p.r;
  if (cached && mode == FWD_APPLY) {
    const Vec z = standardize ? (out - p.mc) * p.k : out;
    out = has_w ? z * p.w : z;
    if (has_b) out = out + p.b;
    return;
  }
  if (cached && mode == BWD_DX) {
    out = (out - p.SU - u * p.SUU) * p.r;
    return;
  }
  Vec c, ds, dl(0.f);
  terms<OP>(u, lam, need_ds, need_dl, c, ds, dl);
  if (mode == FWD_SUMS) {
    s0 = c; s1 = c * c; s2 = u * u; out = c;
    return;
  }
  const Vec z = standardize ? (c - p.mc) * p.k : c;
  if (mode == FWD_APPLY) {
    out = has_w ? z * p.w : z;
    if (has_b) out = out + p.b;
    return;
  }
  const Vec gz = has_w ? g * p.w : g;
  if (mode == BWD_SUMS_A) {
    s0 = gz; s1 = gz * c; s2 = g * z; s3 = g;
    return;
  }
  const Vec gc = standardize ? (gz - p.G1) * p.k - p.kc * (c - p.mc) : gz;
  const Vec gu = standardize ? gc * ds + p.ku * u : gz * ds;
  if (mode == BWD_SUMS_B) {
    s0 = gu; s1 = gu * u; out = gu;
    if (need_dl) s2 = gc * dl;
    return;
  }
  out = (gu - p.SU - u * p.SUU) * p.r;
}

static inline SyncVecs sync_broadcast(const float* p, float w, float b) {
  return {Vec(p[0]), Vec(p[1]), Vec(p[2]), Vec(p[3]), Vec(p[4]), Vec(p[5]), Vec(p[6]), Vec(p[7]), Vec(p[8]), Vec(w),
          Vec(b)};
}

// One gathered channel of M values.
template <int64_t OP>
static void sync_group(int64_t mode, const float* xr, const float* gr, float* outr, int64_t M, const SyncVecs& p,
                       bool has_w, bool has_b, float lam, bool standardize, double* sums) {
  const Vec zero(0.f), one(1.f);
  Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  for (int64_t j = 0; j < M; j += W) {
    const int64_t n = std::min<int64_t>(W, M - j);
    const Vec m = n < W ? Vec::set(zero, one, n) : one;  // lanes past the group's end count for nothing
    Vec out, s0(0.f), s1(0.f), s2(0.f), s3(0.f);
    sync_lanes<OP>(mode, p, has_w, has_b, lam, standardize, Vec::loadu(xr + j, n),
                   gr ? Vec::loadu(gr + j, n) : zero, out, s0, s1, s2, s3);
    if (mode == FWD_APPLY || mode == BWD_DX) {
      out.store(outr + j, n);
    } else {
      a0 = a0 + s0 * m; a1 = a1 + s1 * m; a2 = a2 + s2 * m; a3 = a3 + s3 * m;
    }
  }
  sums[0] = hsum(a0); sums[1] = hsum(a1); sums[2] = hsum(a2); sums[3] = hsum(a3);
}

// Dense channels_last: R rows of C contiguous channels, W channels per vector, no gathering. Rows go in blocks of RB
// (float32 is read in place; half types are converted into a float block once); within a block, each run of W
// channels takes its statistics into registers once and walks the block's rows, whose lines stay in L1. Sums are
// float per block, then added into per-thread double partials.
constexpr int64_t RB = 32;

// `cache` (float32 only): modes 0 and 3 also write c and g_u into O, and modes 1 and 4 read them back from O and
// overwrite them in place, so each direction evaluates the transcendental one time fewer.
template <typename T, int64_t OP>
static void sync_rows(int64_t mode, const T* X, const T* G, T* O, int64_t R, int64_t C, const float* PT,
                      const float* Wp, const float* Bp, float lam, bool standardize, double* SUMS, bool cache = false) {
  constexpr bool is_float = std::is_same<T, float>::value;
  TORCH_CHECK(!cache || is_float, "cached passes are float32 only");
  const bool writes = mode == FWD_APPLY || mode == BWD_DX;
  const bool fills = cache && (mode == FWD_SUMS || mode == BWD_SUMS_B);
  const int nthreads = at::get_num_threads();
  std::vector<double> part(writes ? 0 : static_cast<size_t>(nthreads) * 4 * C, 0.0);
  const int64_t nblocks = (R + RB - 1) / RB;
  // The mode as a compile-time constant, so that the inlined sync_lanes branches on nothing in the inner loop.
  auto body = [&](auto mode_c) {
    constexpr int64_t MODE = decltype(mode_c)::value;
    constexpr bool writes = MODE == FWD_APPLY || MODE == BWD_DX;  // shadows the runtime flag with the constant
    at::parallel_for(0, nblocks, std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)), [&](int64_t b0, int64_t b1) {
      double* mine = writes ? nullptr : part.data() + static_cast<size_t>(at::get_thread_num()) * 4 * C;
      std::vector<float> xb(is_float ? 0 : RB * C), gb(is_float || !G ? 0 : RB * C), ob(is_float || !writes ? 0 : RB * C);
      float lanes[4][W];
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * RB, nr = std::min(RB, R - r0);
        const float *xp, *gp = nullptr;
        float* op = nullptr;
        if constexpr (is_float) {
          xp = X + r0 * C;
          if (G) gp = G + r0 * C;
          if (writes || fills) op = O + r0 * C;
        } else {
          load_float(X + r0 * C, xb.data(), nr * C);
          xp = xb.data();
          if (G) { load_float(G + r0 * C, gb.data(), nr * C); gp = gb.data(); }
          if (writes) op = ob.data();
        }
        for (int64_t j = 0; j < C; j += W) {
          const int64_t n = std::min<int64_t>(W, C - j);
          auto ld = [&](int64_t col) { return Vec::loadu(PT + col * C + j, n); };
          const SyncVecs p{ld(0), ld(1), ld(2), ld(3), ld(4), ld(5), ld(6), ld(7), ld(8),
                           Wp ? Vec::loadu(Wp + j, n) : Vec(1.f), Bp ? Vec::loadu(Bp + j, n) : Vec(0.f)};
          Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
          for (int64_t r = 0; r < nr; ++r) {
            Vec out, s0(0.f), s1(0.f), s2(0.f), s3(0.f);
            // The next block's lines, in the order this loop will read them: a run of W channels walks the block's
            // rows at a stride of C, which the hardware prefetchers follow poorly (1.6x on a pass over 16 MB).
            if constexpr (is_float) {  // (a prefetch past the tensor's end is harmless: it never faults)
              __builtin_prefetch(xp + (r + RB) * C + j);
              if (gp) __builtin_prefetch(gp + (r + RB) * C + j);
            }
            if (cache && writes) out = Vec::loadu(op + r * C + j, n);
            sync_lanes<OP>(MODE, p, Wp != nullptr, Bp != nullptr, lam, standardize, Vec::loadu(xp + r * C + j, n),
                           gp ? Vec::loadu(gp + r * C + j, n) : Vec(0.f), out, s0, s1, s2, s3, cache && writes);
            if (writes || fills) out.store(op + r * C + j, n);
            if (!writes) { a0 = a0 + s0; a1 = a1 + s1; a2 = a2 + s2; a3 = a3 + s3; }
          }
          if (!writes) {  // only this run's n channels: lanes past C summed padding
            a0.store(lanes[0]); a1.store(lanes[1]); a2.store(lanes[2]); a3.store(lanes[3]);
            for (int k = 0; k < 4; ++k)
              for (int64_t i = 0; i < n; ++i) mine[k * C + j + i] += lanes[k][i];
          }
        }
        if constexpr (!is_float) {
          if (writes) store_float(ob.data(), O + r0 * C, nr * C);
        }
      }
    });
  };
  switch (mode) {
    case FWD_SUMS: body(std::integral_constant<int64_t, FWD_SUMS>{}); break;
    case FWD_APPLY: body(std::integral_constant<int64_t, FWD_APPLY>{}); break;
    case BWD_SUMS_A: body(std::integral_constant<int64_t, BWD_SUMS_A>{}); break;
    case BWD_SUMS_B: body(std::integral_constant<int64_t, BWD_SUMS_B>{}); break;
    default: body(std::integral_constant<int64_t, BWD_DX>{}); break;
  }
  if (!writes)
    for (int t = 0; t < nthreads; ++t)
      for (int k = 0; k < 4; ++k)
        for (int64_t ch = 0; ch < C; ++ch) SUMS[ch * 4 + k] += part[(static_cast<size_t>(t) * 4 + k) * C + ch];
}

// -> {y or gx (modes 1, 4; else undefined), sums [C, 4] float64 (modes 0, 2, 3)}
std::vector<at::Tensor> channels_sync_pass(int64_t mode, const at::Tensor& x, const c10::optional<at::Tensor>& gy,
                                           const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias, const at::Tensor& P, double lam,
                                           int64_t op, bool standardize) {
  TORCH_CHECK(x.dim() == 3 && mode >= FWD_SUMS && mode <= BWD_DX, "x must be [N, C, S] and mode 0-4");
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2), M = N * S;
  TORCH_CHECK(P.scalar_type() == at::kFloat && P.is_contiguous() && P.size(0) == C && P.size(1) == 9,
              "P must be contiguous float32 [C, 9]");
  const bool with_g = mode >= BWD_SUMS_A;
  TORCH_CHECK(!with_g || (gy.has_value() && gy->sizes() == x.sizes() && gy->scalar_type() == x.scalar_type()),
              "gy must be given, like x");
  const bool writes = mode == FWD_APPLY || mode == BWD_DX;
  at::Tensor out = writes ? at::empty_like(x) : at::Tensor();
  TORCH_CHECK(!writes || out.strides() == x.strides(), "x must be dense (empty_like must keep its strides)");
  auto sums = at::zeros({C, 4}, x.options().dtype(at::kDouble));
  const float* Wp = opt_ptr(weight);
  const float* Bp = opt_ptr(bias);
  const float* Pp = P.data_ptr<float>();
  double* SUMS = sums.data_ptr<double>();
  const float l = static_cast<float>(lam);
  // Dense channels_last (x, gy and the output alike): rows of C channels, read in place.
  const bool rows = C > 1 && x.stride(1) == 1 && x.stride(2) == C && x.stride(0) == S * C &&
                    (!with_g || gy->strides() == x.strides());
  dispatch(x.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* G = with_g ? gy->data_ptr<scalar_t>() : nullptr;
    scalar_t* O = writes ? out.data_ptr<scalar_t>() : nullptr;
    if (rows) {
      const at::Tensor PT = P.t().contiguous();  // [9, C]: each statistic's channels side by side
      with_op(op, [&](auto o) {
        sync_rows<scalar_t, decltype(o)::value>(mode, X, G, O, M, C, PT.data_ptr<float>(), Wp, Bp, l, standardize,
                                                SUMS);
      });
      return;
    }
    const int64_t B = channel_block(x, M);
    at::parallel_for(0, (C + B - 1) / B, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xbuf(B * M), gbuf(with_g ? B * M : 0), obuf(writes ? B * M : 0);
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t c0 = blk * B, nb = std::min(B, C - c0);
        gather(X, x.strides(), c0, nb, N, S, xbuf.data(), M);
        if (with_g) gather(G, gy->strides(), c0, nb, N, S, gbuf.data(), M);
        for (int64_t bi = 0; bi < nb; ++bi) {
          const int64_t ch = c0 + bi;
          const SyncVecs p = sync_broadcast(Pp + ch * 9, Wp ? Wp[ch] : 1.f, Bp ? Bp[ch] : 0.f);
          with_op(op, [&](auto o) {
            sync_group<decltype(o)::value>(mode, xbuf.data() + bi * M, with_g ? gbuf.data() + bi * M : nullptr,
                                           writes ? obuf.data() + bi * M : nullptr, M, p, Wp != nullptr,
                                           Bp != nullptr, l, standardize, SUMS + ch * 4);
          });
        }
        if (writes) scatter(obuf.data(), O, out.strides(), c0, nb, N, S, M);
      }
    });
  });
  return {out, sums};
}

// ---- dense channels_last batch grouping: the synchronized passes, with this process's statistics ---------------
// Rows of C contiguous channels are read in place, W channels per vector, with no gathering or transposition: four
// forward passes (two for the moments of x, step 3's sums, the output) and three backward passes. Gathering blocks of
// channels instead read each row's cache lines with a stride and moved every value through a buffer twice.

static bool dense_channels_last(const at::Tensor& x) {
  const int64_t C = x.size(1), S = x.size(2);
  return C > 1 && x.stride(1) == 1 && x.stride(2) == C && x.stride(0) == S * C;
}

template <typename T>
static void local_pass(int64_t mode, int64_t op, const T* X, const T* G, T* O, int64_t R, int64_t C,
                       const std::vector<float>& PT, const float* Wp, const float* Bp, float lam, bool standardize,
                       std::vector<double>& sums, bool cache = false) {
  std::fill(sums.begin(), sums.end(), 0.0);
  with_op(op, [&](auto o) {
    sync_rows<T, decltype(o)::value>(mode, X, G, O, R, C, PT.data(), Wp, Bp, lam, standardize, sums.data(), cache);
  });
}

// y and stats [C, 6] as channels_forward's; false (nothing written) when a variance overflows float, which the
// gathering path's rescaling handles.
template <typename T>
static bool channels_last_forward(const T* X, T* Y, int64_t R, int64_t C, const float* Wp, const float* Bp,
                                  const Cfg& c, float* ST) {
  std::vector<float> PT(9 * C, 0.f);  // [9, C]: mu, r, m_c, k, G1, kc, ku, SU, SUU; each row one per channel
  std::vector<double> sums(4 * C);
  std::fill(PT.begin() + C, PT.begin() + 2 * C, 1.f);  // r = 1: the identity op sums x - mu and its square
  local_pass<T>(FWD_SUMS, NONE, X, nullptr, nullptr, R, C, PT, nullptr, nullptr, 1.f, false, sums);
  for (int64_t ch = 0; ch < C; ++ch) PT[ch] = static_cast<float>(sums[ch * 4] / R);
  local_pass<T>(FWD_SUMS, NONE, X, nullptr, nullptr, R, C, PT, nullptr, nullptr, 1.f, false, sums);
  const bool standardize = c.op != NONE && c.cts;
  for (int64_t ch = 0; ch < C; ++ch) {
    const double shift = sums[ch * 4] / R;  // what float rounding left of the mean
    const double var = std::max(sums[ch * 4 + 1] / R - shift * shift, 0.0);
    if (!std::isfinite(static_cast<float>(var))) return false;
    const float mu = static_cast<float>(PT[ch] + shift), v = static_cast<float>(var);
    const float r = 1.f / std::sqrt(v + c.eps);
    float* o = ST + ch * 6;
    o[0] = mu; o[1] = r; o[2] = v; o[3] = 0.f; o[4] = 0.f; o[5] = v * r * r;
    PT[ch] = mu; PT[C + ch] = r;
  }
  // float32: step 3's pass leaves c in y for the output pass (half types would round it, so they evaluate it twice).
  // Measured on AVX-512 at 64x64x32x32: a write and a read of y cost about one tanh or log evaluation, and half a
  // power one; for the identity op they cost more than its s(u), so it reads nothing back.
  const bool cache = std::is_same<T, float>::value && c.op != NONE;
  if (standardize) {  // step 3: moments of c = s(u)
    local_pass<T>(FWD_SUMS, c.op, X, nullptr, cache ? Y : nullptr, R, C, PT, nullptr, nullptr, c.lam, true, sums,
                  cache);
    for (int64_t ch = 0; ch < C; ++ch) {
      const double mc = sums[ch * 4] / R;
      float* o = ST + ch * 6;
      o[3] = static_cast<float>(mc);
      o[4] = static_cast<float>(std::max(sums[ch * 4 + 1] / R - mc * mc, 0.0));
      PT[2 * C + ch] = o[3];
      PT[3 * C + ch] = std::sqrt((o[5] + c.eps) / (o[4] + c.eps));
    }
  }
  local_pass<T>(FWD_APPLY, c.op, X, nullptr, Y, R, C, PT, Wp, Bp, c.lam, standardize, sums, cache && standardize);
  return true;
}

// gx, and the per-channel sums of the parameter gradients and the strength's, from the forward's stats [C, 6].
template <typename T>
static void channels_last_backward(const T* X, const T* G, T* GX, int64_t R, int64_t C, const float* Wp,
                                   const float* ST, const Cfg& c, float* GW, float* GB, double& dl) {
  const bool standardize = c.op != NONE && c.cts;
  std::vector<float> PT(9 * C, 0.f);
  std::vector<double> sums(4 * C);
  for (int64_t ch = 0; ch < C; ++ch) {
    const float* o = ST + ch * 6;
    PT[ch] = o[0]; PT[C + ch] = o[1];
    if (standardize) { PT[2 * C + ch] = o[3]; PT[3 * C + ch] = std::sqrt((o[5] + c.eps) / (o[4] + c.eps)); }
  }
  local_pass<T>(BWD_SUMS_A, c.op, X, G, nullptr, R, C, PT, Wp, nullptr, c.lam, standardize, sums);
  for (int64_t ch = 0; ch < C; ++ch) {
    GW[ch] = static_cast<float>(sums[ch * 4 + 2]);
    GB[ch] = static_cast<float>(sums[ch * 4 + 3]);
    if (standardize) {  // step 3's backward: g1 = mean(gz), g2 = mean(gz (c - m_c))
      const double k = PT[3 * C + ch], g1 = sums[ch * 4] / R, g2 = sums[ch * 4 + 1] / R - PT[2 * C + ch] * g1;
      PT[4 * C + ch] = static_cast<float>(g1);
      PT[5 * C + ch] = static_cast<float>(k * g2 / (ST[ch * 6 + 4] + c.eps));
      PT[6 * C + ch] = static_cast<float>(k * g2 / (ST[ch * 6 + 5] + c.eps));
    }
  }
  const bool cache = std::is_same<T, float>::value && c.op != NONE;  // g_u goes through gx, as c through y above
  local_pass<T>(BWD_SUMS_B, c.op, X, G, cache ? GX : nullptr, R, C, PT, Wp, nullptr, c.lam, standardize, sums, cache);
  dl = 0;
  for (int64_t ch = 0; ch < C; ++ch) {
    PT[7 * C + ch] = static_cast<float>(sums[ch * 4] / R);
    PT[8 * C + ch] = static_cast<float>(sums[ch * 4 + 1] / R);
    dl += sums[ch * 4 + 2];
  }
  local_pass<T>(BWD_DX, c.op, X, G, GX, R, C, PT, Wp, nullptr, c.lam, standardize, sums, cache);
}

// The transcendental alone: sum over u of s(u) (the forward's evaluation) or of s(u) + s'(u) (the backward's), with
// every thread computing and nothing stored, so that a benchmark can time the polynomial apart from memory passes.
at::Tensor op_cost(const at::Tensor& u_in, int64_t op, double lam_d, bool backward) {
  TORCH_CHECK(u_in.scalar_type() == at::kFloat && u_in.is_contiguous(), "u must be contiguous float32");
  const float lam = static_cast<float>(lam_d);
  const float* U = u_in.data_ptr<float>();
  const int64_t N = u_in.numel();
  std::vector<double> part(at::get_num_threads(), 0.0);
  at::parallel_for(0, (N + W - 1) / W, 4096, [&](int64_t b, int64_t e) {
    Vec acc(0.f);
    for (int64_t i = b; i < e; ++i) {
      const int64_t j = i * W, n = std::min<int64_t>(W, N - j);
      Vec vs, vds(0.f), vdl;
      with_op(op, [&](auto o) { terms<decltype(o)::value>(Vec::loadu(U + j, n), lam, backward, false, vs, vds, vdl); });
      if (backward) vs = vs + vds;  // (the identity op sets s' = 1 even when it is not asked for)
      acc = acc + Vec::set(Vec(0.f), vs, n);  // the tail's zero padding would add s'(0)
    }
    part[at::get_thread_num()] += hsum(acc);
  });
  double total = 0;
  for (double p : part) total += p;
  return at::scalar_tensor(total, u_in.options());
}

// s(u), s'(u), ds/dlam(u) of op `op` over a float32 tensor, as the kernels evaluate them, so that tests can hold
// the op codes and formulas to ibnorm/ops.py value by value.
std::vector<at::Tensor> op_terms(const at::Tensor& u_in, int64_t op, double lam_d) {
  TORCH_CHECK(u_in.scalar_type() == at::kFloat, "u must be float32");
  auto u = u_in.contiguous().reshape({-1});
  auto s = at::empty_like(u), ds = at::empty_like(u), dl = at::empty_like(u);
  const float lam = static_cast<float>(lam_d);
  const float* U = u.data_ptr<float>();
  float *S = s.data_ptr<float>(), *DS = ds.data_ptr<float>(), *DL = dl.data_ptr<float>();
  for (int64_t j = 0; j < u.numel(); j += W) {
    const int64_t n = std::min<int64_t>(W, u.numel() - j);
    Vec vs, vds, vdl;
    with_op(op, [&](auto o) { terms<decltype(o)::value>(Vec::loadu(U + j, n), lam, true, true, vs, vds, vdl); });
    vs.store(S + j, n); vds.store(DS + j, n); vdl.store(DL + j, n);
  }
  return {s.reshape(u_in.sizes()), ds.reshape(u_in.sizes()), dl.reshape(u_in.sizes())};
}

// ---- torch operators: the CPU kernels and their autograd, registered when this library loads -------------------
// The schemas and fake implementations are defined in ibnorm/kernels/cpu.py, so torch.compile traces the ops before
// this library is built. Autograd is here in C++, so an eager call costs one dispatcher call and no Python layers.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptT = c10::optional<at::Tensor>;

static at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options().dtype(at::kFloat));
}
static OptT opt(const at::Tensor& t) { return t.defined() ? OptT(t) : OptT(); }

static std::tuple<at::Tensor, at::Tensor> rows_forward_op(const at::Tensor& x, const OptT& weight, const OptT& bias,
                                                          const OptT& lam_t, double lam, int64_t op, bool centered,
                                                          bool cts, double eps) {
  auto out = rows_forward(x, weight, bias, lam_t, lam, op, centered, cts, eps);
  return {out[0], out[1]};
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rows_backward_op(
    const at::Tensor& gy, const at::Tensor& x, const OptT& weight, const at::Tensor& stats, const OptT& lam_t,
    double lam, int64_t op, bool centered, bool cts, double eps, bool need_dw, bool need_db, bool need_dl,
    int64_t bias_rows) {
  auto out = rows_backward(gy, x, weight, stats, lam_t, lam, op, centered, cts, eps, need_dw, need_db, need_dl,
                           bias_rows);
  return {out[0], or_empty(out[1], x), or_empty(out[2], x), out[3]};
}

static std::tuple<at::Tensor, at::Tensor> channels_forward_op(const at::Tensor& x, const OptT& weight,
                                                              const OptT& bias, const OptT& lam_t, double lam,
                                                              int64_t op, bool cts, double eps) {
  auto out = channels_forward(x, weight, bias, lam_t, lam, op, cts, eps);
  return {out[0], out[1]};
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> channels_backward_op(
    const at::Tensor& gy, const at::Tensor& x, const OptT& weight, const at::Tensor& stats, const OptT& lam_t,
    double lam, int64_t op, bool cts, double eps, bool need_dw, bool need_db, bool need_dl) {
  auto out = channels_backward(gy, x, weight, stats, lam_t, lam, op, cts, eps, need_dw, need_db, need_dl);
  return {out[0], or_empty(out[1], x), or_empty(out[2], x), out[3]};
}

template <typename Fn>
static auto typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// What both backwards need: the input, the weight and a learned strength (undefined when absent), the statistics.
static void save_inputs(AutogradContext* ctx, const at::Tensor& x, const OptT& weight, const OptT& lam_t,
                        const at::Tensor& stats, double lam, double eps) {
  ctx->save_for_backward({x, weight.value_or(at::Tensor()), lam_t.value_or(at::Tensor()), stats});
  ctx->saved_data["cfg"] = c10::List<double>({lam, eps});
  ctx->mark_non_differentiable({stats});
}

// Gradients of every present tensor input (weight, bias, a learned strength); x always.
struct RowsFunction : public torch::autograd::Function<RowsFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& weight, const OptT& bias,
                               const OptT& lam_t, double lam, int64_t op, bool centered, bool cts, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = typed_op<decltype(rows_forward_op)>("ibnorm::rows_forward");
    auto [y, stats] = fwd.call(x, weight, bias, lam_t, lam, op, centered, cts, eps);
    save_inputs(ctx, x, weight, lam_t, stats, lam, eps);
    ctx->saved_data["flags"] = c10::List<int64_t>({op, centered, cts});
    ctx->saved_data["bias_shape"] = bias.has_value() ? bias->sizes().vec() : std::vector<int64_t>{};
    return {y, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1], &lam_t = s[2], &stats = s[3];
    const auto cfg = ctx->saved_data["cfg"].toDoubleList();
    const auto flags = ctx->saved_data["flags"].toIntList();
    const auto bias_shape = ctx->saved_data["bias_shape"].toIntVector();
    const bool has_bias = !bias_shape.empty();
    static auto bwd = typed_op<decltype(rows_backward_op)>("ibnorm::rows_backward");
    // Grad mode is on only under create_graph=True: then the reference's differentiable backward (Python).
    static auto bwd_twice = typed_op<decltype(rows_backward_op)>("ibnorm::rows_backward_differentiable");
    const at::Tensor gy = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(x);
    auto [gx, gw, gb, gl] = (at::GradMode::is_enabled() ? bwd_twice : bwd).call(gy, x, opt(w), stats, opt(lam_t), cfg[0], flags[0], flags[1], flags[2], cfg[1],
                                     w.defined(), has_bias, lam_t.defined(),
                                     has_bias && bias_shape.size() == 2 ? bias_shape[0] : 1);
    return {gx, w.defined() ? gw.reshape(w.sizes()) : at::Tensor(), has_bias ? gb.reshape(bias_shape) : at::Tensor(),
            lam_t.defined() ? gl.to(lam_t.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

struct ChannelsFunction : public torch::autograd::Function<ChannelsFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptT& weight, const OptT& bias,
                               const OptT& lam_t, double lam, int64_t op, bool cts, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = typed_op<decltype(channels_forward_op)>("ibnorm::channels_forward");
    auto [y, stats] = fwd.call(x, weight, bias, lam_t, lam, op, cts, eps);
    save_inputs(ctx, x, weight, lam_t, stats, lam, eps);
    ctx->saved_data["flags"] = c10::List<int64_t>({op, cts, bias.has_value()});
    return {y, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1], &lam_t = s[2], &stats = s[3];
    const auto cfg = ctx->saved_data["cfg"].toDoubleList();
    const auto flags = ctx->saved_data["flags"].toIntList();
    const bool has_bias = flags[2];
    static auto bwd = typed_op<decltype(channels_backward_op)>("ibnorm::channels_backward");
    static auto bwd_twice = typed_op<decltype(channels_backward_op)>("ibnorm::channels_backward_differentiable");
    const at::Tensor gy = grads[0].defined() ? grads[0] : at::zeros_like(x);
    auto [gx, gw, gb, gl] = (at::GradMode::is_enabled() ? bwd_twice : bwd).call(gy, x, opt(w), stats, opt(lam_t), cfg[0], flags[0], flags[1], cfg[1],
                                     w.defined(), has_bias, lam_t.defined());
    return {gx, w.defined() ? gw : at::Tensor(), has_bias ? gb : at::Tensor(),
            lam_t.defined() ? gl.to(lam_t.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

static std::tuple<at::Tensor, at::Tensor> rows_forward_autograd(const at::Tensor& x, const OptT& weight,
                                                                const OptT& bias, const OptT& lam_t, double lam,
                                                                int64_t op, bool centered, bool cts, double eps) {
  auto out = RowsFunction::apply(x, weight, bias, lam_t, lam, op, centered, cts, eps);
  return {out[0], out[1]};
}

static std::tuple<at::Tensor, at::Tensor> channels_forward_autograd(const at::Tensor& x, const OptT& weight,
                                                                    const OptT& bias, const OptT& lam_t, double lam,
                                                                    int64_t op, bool cts, double eps) {
  auto out = ChannelsFunction::apply(x, weight, bias, lam_t, lam, op, cts, eps);
  return {out[0], out[1]};
}

TORCH_LIBRARY_IMPL(ibnorm, CPU, m) {
  m.impl("rows_forward", &rows_forward_op);
  m.impl("rows_backward", &rows_backward_op);
  m.impl("channels_forward", &channels_forward_op);
  m.impl("channels_backward", &channels_backward_op);
}

TORCH_LIBRARY_IMPL(ibnorm, Autograd, m) {
  m.impl("rows_forward", &rows_forward_autograd);
  m.impl("channels_forward", &channels_forward_autograd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("op_terms", &op_terms, "s, s', ds/dlam of one op (float32), for tests");
  m.def("op_cost", &op_cost, "the transcendental alone (a benchmark's floor): sum of s(u) [+ s'(u)] over u");
  m.def("channels_sync_pass", &channels_sync_pass, "one pass of synchronized batch grouping (IBSyncBatchNorm)");
}
