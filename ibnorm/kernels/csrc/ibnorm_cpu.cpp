// IBNorm forward/backward for last-dimension groups (layer and RMS grouping), float32, CPU.
// One row = one group of M values, processed by one thread with the row held in cache; rows are split
// over threads with at::parallel_for. Transcendentals use ATen's vectorized (Sleef) exp/log1p/expm1/tanh;
// the tail of a row uses the scalar <cmath> functions. The math is derived in docs/method.md; the op codes
// and formulas are ibnorm/ops.py's, which tests/test_ops.py checks through op_terms below.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <vector>

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();
enum Op : int64_t { POWER = 0, LOG = 1, TANH = 2, NONE = 3 };


// Fast float32 transcendentals. With AVX2+FMA: Cephes-style polynomials (exp: degree 6 after a
// ln2 range reduction, log: degree 8 on the mantissa), about 1-3 ulp, several times cheaper than
// ATen's Sleef u10 versions; small arguments take Taylor series so relative accuracy holds near 0.
// Elsewhere: ATen's vectorized functions.
#if defined(__AVX2__) && defined(__FMA__) && defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
static inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
static inline __m256 log256(__m256 x) {  // x >= 1 here (log of 1 + a, a >= 0)
  __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  x = _mm256_or_ps(_mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff))), _mm256_set1_ps(0.5f));
  __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(_mm256_set1_ps(1.f), small));
  x = _mm256_add_ps(_mm256_sub_ps(x, _mm256_set1_ps(1.f)), _mm256_and_ps(x, small));
  __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(7.0376836292E-2f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174E-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(x, y));
}
static inline Vec fexp(const Vec& v) { return Vec(exp256(__m256(v))); }
static inline Vec flog1p(const Vec& a) {  // a >= 0; log(1 + a) * a / ((1 + a) - 1) keeps small a accurate
  const Vec one(1.f);
  Vec v = one + a, d = v - one;
  Vec r = Vec(log256(__m256(v))) * a / d;
  return Vec::blendv(r, a, d == Vec(0.f));
}
static inline Vec fexpm1(const Vec& t) {
  Vec series = t * (Vec(1.f) + t * (Vec(0.5f) + t * (Vec(1.f / 6) + t * Vec(1.f / 24))));
  return Vec::blendv(fexp(t) - Vec(1.f), series, t.abs() < Vec(0.01f));
}
static inline Vec ftanh(const Vec& y) {
  Vec a = y.abs();
  Vec big = Vec(1.f) - Vec(2.f) / (fexp(a + a) + Vec(1.f));
  Vec z = a * a;
  Vec series = a * (Vec(1.f) + z * (Vec(-1.f / 3) + z * (Vec(2.f / 15) + z * Vec(-17.f / 315))));
  return Vec::blendv(big, series, a < Vec(0.05f)).copysign(y);
}
#else
static inline Vec flog1p(const Vec& a) { return a.log1p(); }
static inline Vec fexpm1(const Vec& t) { return t.expm1(); }
static inline Vec ftanh(const Vec& y) { return y.tanh(); }
#endif

// s(u), s'(u), ds/dlam(u): vector form.
static inline void terms(int64_t op, const Vec& u, float lam, bool need_ds, bool need_dl, Vec& s, Vec& ds, Vec& dl) {
  const Vec one(1.f), vl(lam), inv(1.f / lam), inv2(1.f / (lam * lam));
  if (op == TANH) {
    Vec t = ftanh(vl * u);
    s = t * inv;
    if (need_ds || need_dl) ds = one - t * t;
    if (need_dl) dl = u * ds * inv - t * inv2;
    return;
  }
  Vec a = u.abs();
  if (op == POWER) {
    Vec L = flog1p(a);
    Vec em1 = fexpm1(vl * L);
    s = (em1 * inv).copysign(u);
    if (need_ds || need_dl) ds = (em1 + one) / (one + a);
    if (need_dl) dl = (L * (em1 + one) * inv - em1 * inv2) * one.copysign(u);  // times sign(u): may be < 0
    return;
  }
  Vec la = vl * a;
  Vec lq = flog1p(la);
  s = (lq * inv).copysign(u);
  if (need_ds || need_dl) ds = one / (one + la);
  if (need_dl) dl = (a * ds * inv - lq * inv2) * one.copysign(u);
}

// The same, scalar (row tails).
static inline void terms(int64_t op, float u, float lam, bool need_ds, bool need_dl, float& s, float& ds, float& dl) {
  const float inv = 1.f / lam, inv2 = 1.f / (lam * lam);
  if (op == TANH) {
    float t = std::tanh(lam * u);
    s = t * inv;
    ds = 1.f - t * t;
    if (need_dl) dl = u * ds * inv - t * inv2;
    return;
  }
  float a = std::fabs(u);
  if (op == POWER) {
    float L = std::log1p(a), em1 = std::expm1(lam * L);
    s = std::copysign(em1 * inv, u);
    ds = (em1 + 1.f) / (1.f + a);
    if (need_dl) dl = (L * (em1 + 1.f) * inv - em1 * inv2) * std::copysign(1.f, u);
    return;
  }
  float la = lam * a, lq = std::log1p(la);
  s = std::copysign(lq * inv, u);
  ds = 1.f / (1.f + la);
  if (need_dl) dl = (a * ds * inv - lq * inv2) * std::copysign(1.f, u);
  (void)need_ds;
}

static inline double hsum(const Vec& v) {
  float buf[W];
  v.store(buf);
  double s = 0;
  for (int64_t j = 0; j < W; ++j) s += buf[j];
  return s;
}

// Returns y [R, M] and per-row statistics [R, 2]: mu, r (what nn.LayerNorm saves; the rest is recomputed).
std::vector<at::Tensor> ib_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                   const c10::optional<at::Tensor>& bias, double lam_d, int64_t op, bool centered,
                                   bool cts, double eps_d) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float32 [R, M]");
  const int64_t R = x.size(0), M = x.size(1);
  auto y = at::empty_like(x);
  auto stats = at::zeros({R, 2}, x.options());
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  float* S = stats.data_ptr<float>();
  const float* Wt = weight.has_value() ? weight->data_ptr<float>() : nullptr;
  const float* Bs = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const float lam = static_cast<float>(lam_d), eps = static_cast<float>(eps_d);
  const int64_t vend = M - M % W;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));

  at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
    Vec dummy;
    for (int64_t i = begin; i < end; ++i) {
      const float* xr = X + i * M;
      float* yr = Y + i * M;
      // Step 1: statistics (two passes over a cached row).
      double mu = 0;
      if (centered) {
        Vec acc(0.f);
        for (int64_t j = 0; j < vend; j += W) acc = acc + Vec::loadu(xr + j);
        mu = hsum(acc);
        for (int64_t j = vend; j < M; ++j) mu += xr[j];
        mu /= M;
      }
      const float muf = static_cast<float>(mu);
      Vec acc2(0.f), vmu(muf);
      for (int64_t j = 0; j < vend; j += W) { Vec d = Vec::loadu(xr + j) - vmu; acc2 = acc2 + d * d; }
      double var = hsum(acc2);
      for (int64_t j = vend; j < M; ++j) { float d = xr[j] - muf; var += d * d; }
      var /= M;
      const float r = 1.f / std::sqrt(static_cast<float>(var) + eps);
      const Vec vr(r);
      float m_c = 0.f, k = 1.f, v_c = 0.f, v_u = static_cast<float>(var) * r * r;
      if (op == NONE || !cts) {
        // z = u or z = s(u); then the affine map.
        for (int64_t j = 0; j < M; j += W) {
          int64_t n = std::min<int64_t>(W, M - j);
          Vec u = (Vec::loadu(xr + j, n) - vmu) * vr, z = u;
          if (op != NONE) {
            if (n == W) { Vec ds, dl; terms(op, u, lam, false, false, z, ds, dl); }
            else {
              float ub[W], zb[W];
              u.store(ub, n);
              for (int64_t t = 0; t < n; ++t) { float ds, dl; terms(op, ub[t], lam, false, false, zb[t], ds, dl); }
              z = Vec::loadu(zb, n);
            }
          }
          if (Wt) z = z * Vec::loadu(Wt + j, n);
          if (Bs) z = z + Vec::loadu(Bs + j, n);
          z.store(yr + j, n);
        }
      } else {
        // Steps 2-3: c = s(u) into y, its moments, then z = (c - m_c) k and the affine map.
        Vec sc(0.f), sc2(0.f);
        for (int64_t j = 0; j < vend; j += W) {
          Vec u = (Vec::loadu(xr + j) - vmu) * vr, c, ds, dl;
          terms(op, u, lam, false, false, c, ds, dl);
          c.store(yr + j);
          sc = sc + c;
          sc2 = sc2 + c * c;
        }
        double s1 = hsum(sc), s2 = hsum(sc2);
        for (int64_t j = vend; j < M; ++j) {
          float u = (xr[j] - muf) * r, c, ds, dl;
          terms(op, u, lam, false, false, c, ds, dl);
          yr[j] = c;
          s1 += c;
          s2 += static_cast<double>(c) * c;
        }
        double mc = centered ? s1 / M : 0.0;
        double vc = std::max(s2 / M - mc * mc, 0.0);
        m_c = static_cast<float>(mc);
        v_c = static_cast<float>(vc);
        k = std::sqrt((v_u + eps) / (v_c + eps));
        const Vec vmc(m_c), vk(k);
        for (int64_t j = 0; j < M; j += W) {
          int64_t n = std::min<int64_t>(W, M - j);
          Vec z = (Vec::loadu(yr + j, n) - vmc) * vk;
          if (Wt) z = z * Vec::loadu(Wt + j, n);
          if (Bs) z = z + Vec::loadu(Bs + j, n);
          z.store(yr + j, n);
        }
      }
      S[i * 2] = muf;
      S[i * 2 + 1] = r;
    }
    (void)dummy;
  });
  return {y, stats};
}

// Returns gx [R, M], gw [M] (or empty), gb [M] (or empty), glam (0-d).
std::vector<at::Tensor> ib_backward(const at::Tensor& gy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                    const at::Tensor& stats, double lam_d, int64_t op, bool centered, bool cts,
                                    double eps_d, bool need_dw, bool need_db, bool need_dl) {
  TORCH_CHECK(gy.is_contiguous() && x.is_contiguous() && gy.scalar_type() == at::kFloat, "gy, x: contiguous float32");
  const int64_t R = x.size(0), M = x.size(1);
  auto gx = at::empty_like(x);
  const int nthreads = at::get_num_threads();
  auto dw_part = at::zeros({nthreads, M}, x.options());
  auto db_part = at::zeros({nthreads, M}, x.options());
  auto dl_part = at::zeros({nthreads}, x.options().dtype(at::kDouble));
  const float* X = x.data_ptr<float>();
  const float* G = gy.data_ptr<float>();
  const float* S = stats.data_ptr<float>();
  const float* Wt = weight.has_value() ? weight->data_ptr<float>() : nullptr;
  float* GX = gx.data_ptr<float>();
  const float lam = static_cast<float>(lam_d), eps = static_cast<float>(eps_d);
  const bool need_dl_k = need_dl && op != NONE;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));

  at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    float* dw = dw_part.data_ptr<float>() + tid * M;
    float* db = db_part.data_ptr<float>() + tid * M;
    double dl_acc = 0;
    std::vector<float> gu_buf(M), c_buf(M), ds_buf(M), dl_buf(need_dl_k ? M : 0);
    const bool standardize = op != NONE && cts;
    for (int64_t i = begin; i < end; ++i) {
      const float* xr = X + i * M;
      const float* gr = G + i * M;
      float* gxr = GX + i * M;
      const float mu = S[i * 2], r = S[i * 2 + 1];
      const Vec vmu(mu), vr(r);
      // Pass A: recompute u, s, s', ds/dlam and the group sums of step 3; g_u directly when there is no step 3.
      Vec aSU(0.f), aSUU(0.f), aDL(0.f), aUU(0.f), aC(0.f), aCC(0.f), aGZ(0.f), aGZC(0.f);
      for (int64_t j = 0; j < M; j += W) {
        int64_t n = std::min<int64_t>(W, M - j);
        Vec u = (Vec::loadu(xr + j, n) - vmu) * vr;
        Vec g = Vec::loadu(gr + j, n);
        Vec gz = Wt ? g * Vec::loadu(Wt + j, n) : g;
        Vec ds(1.f), dlv(0.f), c = u;
        if (op != NONE) {
          if (n == W) terms(op, u, lam, true, need_dl_k, c, ds, dlv);
          else {
            float ub[W], cb[W], dsb[W], dlb[W];
            u.store(ub, n);
            for (int64_t t = 0; t < n; ++t) { dlb[t] = 0.f; terms(op, ub[t], lam, true, need_dl_k, cb[t], dsb[t], dlb[t]); }
            for (int64_t t = n; t < W; ++t) { cb[t] = 0.f; dsb[t] = 0.f; dlb[t] = 0.f; }
            c = Vec::loadu(cb); ds = Vec::loadu(dsb); dlv = Vec::loadu(dlb);
          }
        }
        if (!standardize) {
          Vec gu = gz * ds;
          gu.store(gu_buf.data() + j, n);
          aSU = aSU + gu;
          aSUU = aSUU + gu * u;
          if (need_dl_k) aDL = aDL + gz * dlv;
          if (need_dw) (Vec::loadu(dw + j, n) + g * c).store(dw + j, n);
        } else {
          c.store(c_buf.data() + j, n);
          ds.store(ds_buf.data() + j, n);
          if (need_dl_k) dlv.store(dl_buf.data() + j, n);
          gz.store(gu_buf.data() + j, n);
          aC = aC + c;
          aCC = aCC + c * c;
          aGZ = aGZ + gz;
          aGZC = aGZC + gz * c;
        }
        if (need_db) (Vec::loadu(db + j, n) + g).store(db + j, n);
      }
      if (standardize) {
        // Step 3's statistics, recomputed: m_c, v_c from c; v_u = mean(u^2) (the data form of var(u)).
        double su2 = 0;
        for (int64_t j = 0; j < M; ++j) { float u = (xr[j] - mu) * r; su2 += static_cast<double>(u) * u; }
        const double m_c = centered ? hsum(aC) / M : 0.0;
        const double v_c = std::max(hsum(aCC) / M - m_c * m_c, 0.0);
        const double v_u = su2 / M;
        const double k = std::sqrt((v_u + eps) / (v_c + eps));
        const double G1 = centered ? hsum(aGZ) / M : 0.0;
        const double G2 = hsum(aGZC) / M - m_c * G1;
        const Vec vG1(static_cast<float>(G1)), vk(static_cast<float>(k)), vmc(static_cast<float>(m_c)),
            kc(static_cast<float>(k * G2 / (v_c + eps))), ku(static_cast<float>(k * G2 / (v_u + eps)));
        // Pass B: z for the weight gradient, g_c, g_u and their sums.
        Vec adl(0.f);
        for (int64_t j = 0; j < M; j += W) {
          int64_t n = std::min<int64_t>(W, M - j);
          Vec u = (Vec::loadu(xr + j, n) - vmu) * vr;
          Vec gz = Vec::loadu(gu_buf.data() + j, n);
          Vec d = Vec::loadu(c_buf.data() + j, n) - vmc;
          if (need_dw) (Vec::loadu(dw + j, n) + Vec::loadu(gr + j, n) * d * vk).store(dw + j, n);
          Vec gc = (gz - vG1) * vk - kc * d;
          Vec gu = gc * Vec::loadu(ds_buf.data() + j, n) + ku * u;
          if (need_dl_k) adl = adl + gc * Vec::loadu(dl_buf.data() + j, n);
          gu.store(gu_buf.data() + j, n);
          if (n < W) gu = Vec::loadu(gu_buf.data() + j, n);  // zero the lanes past the row's end
          aSU = aSU + gu;
          aSUU = aSUU + gu * u;
        }
        if (need_dl_k) dl_acc += hsum(adl);
      } else if (need_dl_k) {
        dl_acc += hsum(aDL);
      }
      const double SU = centered ? hsum(aSU) / M : 0.0;
      const double SUU = hsum(aSUU) / M;
      const Vec vSU(static_cast<float>(SU)), vSUU(static_cast<float>(SUU));
      // Pass C: the LayerNorm (RMSNorm) backward through u.
      for (int64_t j = 0; j < M; j += W) {
        int64_t n = std::min<int64_t>(W, M - j);
        Vec u = (Vec::loadu(xr + j, n) - vmu) * vr;
        Vec gu = Vec::loadu(gu_buf.data() + j, n);
        ((gu - vSU - u * vSUU) * vr).store(gxr + j, n);
      }
    }
    dl_part.data_ptr<double>()[tid] += dl_acc;
  });
  at::Tensor gw = need_dw ? dw_part.sum(0) : at::Tensor();
  at::Tensor gb = need_db ? db_part.sum(0) : at::Tensor();
  return {gx, gw, gb, dl_part.sum().to(at::kFloat)};
}

// s(u), s'(u), ds/dlam(u) of op `op` over a float32 tensor, as the kernels above evaluate them (vector body,
// scalar tail), so that tests can hold the op codes and formulas to ibnorm/ops.py value by value.
std::vector<at::Tensor> op_terms(const at::Tensor& u_in, int64_t op, double lam_d) {
  TORCH_CHECK(u_in.scalar_type() == at::kFloat, "u must be float32");
  auto u = u_in.contiguous().reshape({-1});
  auto s = at::empty_like(u), ds = at::empty_like(u), dl = at::empty_like(u);
  if (op == NONE) return {u.clone(), at::ones_like(u), at::zeros_like(u)};
  const float lam = static_cast<float>(lam_d);
  const float* U = u.data_ptr<float>();
  float *S = s.data_ptr<float>(), *DS = ds.data_ptr<float>(), *DL = dl.data_ptr<float>();
  const int64_t n = u.numel(), vend = n - n % W;
  for (int64_t j = 0; j < vend; j += W) {
    Vec vs, vds, vdl;
    terms(op, Vec::loadu(U + j), lam, true, true, vs, vds, vdl);
    vs.store(S + j); vds.store(DS + j); vdl.store(DL + j);
  }
  for (int64_t j = vend; j < n; ++j) terms(op, U[j], lam, true, true, S[j], DS[j], DL[j]);
  return {s.reshape(u_in.sizes()), ds.reshape(u_in.sizes()), dl.reshape(u_in.sizes())};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("op_terms", &op_terms, "s, s', ds/dlam of one op (float32), for tests");
  m.def("forward", &ib_forward, "IBNorm rows forward (float32)");
  m.def("backward", &ib_backward, "IBNorm rows backward (float32)");
}
