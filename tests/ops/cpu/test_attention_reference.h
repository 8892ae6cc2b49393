// An independent double-precision reference for LS attention and the span
// decomposition, written the textbook way: for every (batch, head) the full
// T x T logit matrix with an explicit -inf mask, P = softmax(S), and every
// gradient as a product of explicit matrices, then the row projection written
// out as g_par and g_perp (docs/SPAN.md). It shares no code with the kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ops/attention_spec.h"
#include "ops/cpu/attention.h"

namespace lsgpt::testing {

struct AttentionReference {
  std::vector<double> out, lse, max_logit, kbar;  // forward
  std::vector<double> dqkv;                       // backward, span applied
};

// Is key j hidden from query i in head h?
inline bool reference_masked(const AttentionSpec& s, int h, int i, int j) {
  if (j > i) return true;
  return h < s.n_local && j <= i - s.window;
}

// g' = a_par g_par + a_perp g_perp; g unchanged when u.u <= 1e-12 (1 + g.g).
inline void reference_project(double* g, const std::vector<double>& u, int D, const SpanTarget& t) {
  double gu = 0, uu = 0, gg = 0;
  for (int d = 0; d < D; ++d) gu += g[d] * u[d], uu += u[d] * u[d], gg += g[d] * g[d];
  if (uu <= 1e-12 * (1 + gg)) return;
  for (int d = 0; d < D; ++d) {
    const double par = gu / uu * u[d];
    const double perp = g[d] - par;
    g[d] = t.alpha_par * par + t.alpha_perp * perp;
  }
}

// dout may be empty: then only the forward is computed.
inline AttentionReference reference_attention(const std::vector<double>& qkv,
                                              const std::vector<double>& dout,
                                              const AttentionSpec& s) {
  const int B = s.B, T = s.T, H = s.n_head, D = s.head_dim, C = s.C();
  const double tau = 1.0 / std::sqrt(double(D));
  const double ninf = -std::numeric_limits<double>::infinity();
  AttentionReference r;
  r.out.assign(size_t(B) * T * C, 0);
  r.kbar.assign(size_t(B) * T * C, 0);
  r.lse.assign(size_t(B) * H * T, 0);
  r.max_logit.assign(H, ninf);
  if (!dout.empty()) r.dqkv.assign(size_t(B) * T * 3 * C, 0);
  using Mat = std::vector<std::vector<double>>;
  auto mat = [](int rows, int cols) { return Mat(rows, std::vector<double>(cols, 0.0)); };

  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      Mat Q = mat(T, D), K = mat(T, D), V = mat(T, D), dO = mat(T, D);
      for (int t = 0; t < T; ++t)
        for (int d = 0; d < D; ++d) {
          const size_t row = (size_t(b) * T + t) * 3 * C + size_t(h) * D + d;
          Q[t][d] = qkv[row], K[t][d] = qkv[row + C], V[t][d] = qkv[row + 2 * C];
          if (!dout.empty()) dO[t][d] = dout[(size_t(b) * T + t) * C + size_t(h) * D + d];
        }
      Mat S = mat(T, T), P = mat(T, T);
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += Q[i][d] * K[j][d];
          S[i][j] = reference_masked(s, h, i, j) ? ninf : tau * dot;
          if (S[i][j] != ninf) r.max_logit[h] = std::max(r.max_logit[h], S[i][j]);
        }
        const double m = *std::max_element(S[i].begin(), S[i].end());
        double z = 0;
        for (int j = 0; j < T; ++j) z += std::exp(S[i][j] - m);
        for (int j = 0; j < T; ++j) P[i][j] = std::exp(S[i][j] - m) / z;
        r.lse[(size_t(b) * H + h) * T + i] = m + std::log(z);
        for (int d = 0; d < D; ++d) {
          double o = 0, kb = 0;
          for (int j = 0; j < T; ++j) o += P[i][j] * V[j][d], kb += P[i][j] * K[j][d];
          r.out[(size_t(b) * T + i) * C + size_t(h) * D + d] = o;
          r.kbar[(size_t(b) * T + i) * C + size_t(h) * D + d] = kb;
        }
      }
      if (dout.empty()) continue;

      Mat dP = mat(T, T), dS = mat(T, T), dQ = mat(T, D), dK = mat(T, D), dV = mat(T, D);
      for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j)
          for (int d = 0; d < D; ++d) dP[i][j] += dO[i][d] * V[j][d];
      for (int i = 0; i < T; ++i) {
        double delta = 0;
        for (int j = 0; j < T; ++j) delta += P[i][j] * dP[i][j];
        for (int j = 0; j < T; ++j) dS[i][j] = P[i][j] * (dP[i][j] - delta);
      }
      for (int i = 0; i < T; ++i)
        for (int j = 0; j < T; ++j)
          for (int d = 0; d < D; ++d) {
            dV[j][d] += P[i][j] * dO[i][d];
            dQ[i][d] += tau * dS[i][j] * K[j][d];
            dK[j][d] += tau * dS[i][j] * Q[i][d];
          }

      const SpanLayer& span = s.span;
      std::vector<double> u(D);
      for (int i = 0; i < T && span.q.enabled; ++i) {
        for (int d = 0; d < D; ++d) {
          double kb = 0;
          for (int j = 0; j < T; ++j) kb += P[i][j] * K[j][d];
          u[d] = span.q.basis == SpanBasis::cross ? kb : Q[i][d];
        }
        reference_project(dQ[i].data(), u, D, span.q);
      }
      for (int j = 0; j < T && span.k.enabled; ++j) {
        double colsum = 0;
        for (int i = 0; i < T; ++i) colsum += P[i][j];
        for (int d = 0; d < D; ++d) {
          double qs = 0;
          for (int i = 0; i < T; ++i) qs += P[i][j] * Q[i][d];
          u[d] = span.k.basis == SpanBasis::cross ? (colsum > 0 ? qs / colsum : 0.0) : K[j][d];
        }
        reference_project(dK[j].data(), u, D, span.k);
      }
      for (int j = 0; j < T && span.v.enabled; ++j)
        reference_project(dV[j].data(), V[j], D, span.v);

      for (int t = 0; t < T; ++t)
        for (int d = 0; d < D; ++d) {
          const size_t row = (size_t(b) * T + t) * 3 * C + size_t(h) * D + d;
          r.dqkv[row] = dQ[t][d], r.dqkv[row + C] = dK[t][d], r.dqkv[row + 2 * C] = dV[t][d];
        }
    }
  return r;
}

inline AttentionSpec make_attention_spec(int B, int T, int H, int D, int n_local, int window) {
  AttentionSpec s;
  s.B = B, s.T = T, s.n_head = H, s.head_dim = D, s.n_local = n_local, s.window = window;
  return s;
}

inline std::string describe(const AttentionSpec& s) {
  std::ostringstream os;
  os << "B=" << s.B << " T=" << s.T << " H=" << s.n_head << " D=" << s.head_dim
     << " n_local=" << s.n_local << " w=" << s.window;
  auto target = [&](const char* name, const SpanTarget& t) {
    if (t.enabled)
      os << " " << name << ":" << (t.basis == SpanBasis::cross ? "cross" : "self") << ":"
         << t.alpha_par << ":" << t.alpha_perp;
  };
  target("q", s.span.q), target("k", s.span.k), target("v", s.span.v);
  return os.str();
}

// A random LS configuration: sizes in the given ranges, n_local anywhere in
// 0..n_head, windows from 1 to beyond T.
inline AttentionSpec random_attention_spec(std::mt19937_64& rng, int max_B, int max_T,
                                           int max_heads, int max_D) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  AttentionSpec s;
  s.B = pick(1, max_B);
  s.T = pick(1, max_T);
  s.n_head = pick(1, max_heads);
  s.head_dim = pick(1, max_D);
  s.n_local = pick(0, s.n_head);
  s.window = pick(1, s.T + 2);
  return s;
}

// The kernels under test, run in precision T on double inputs converted to T.
// dout may be empty (forward only). kbar is allocated only when the spec
// needs it, so the kernels are also exercised with a null kbar.
template <typename T>
struct AttentionRun {
  std::vector<T> out, lse, max_logit, kbar, dqkv;
};

template <typename T>
AttentionRun<T> run_cpu_attention(const std::vector<double>& qkv_in,
                                  const std::vector<double>& dout_in, const AttentionSpec& s) {
  const size_t BT = size_t(s.B) * s.T;
  std::vector<T> qkv(qkv_in.begin(), qkv_in.end()), dout(dout_in.begin(), dout_in.end());
  AttentionRun<T> r;
  r.out.assign(BT * s.C(), T(0));
  r.lse.assign(size_t(s.B) * s.n_head * s.T, T(0));
  r.max_logit.assign(s.n_head, T(0));
  if (s.span.needs_kbar()) r.kbar.assign(BT * s.C(), T(0));
  T* kbar = r.kbar.empty() ? nullptr : r.kbar.data();
  cpu::attention_forward(r.out.data(), r.lse.data(), r.max_logit.data(), kbar, qkv.data(), s);
  if (!dout.empty()) {
    r.dqkv.assign(BT * 3 * s.C(), T(-7));  // must be overwritten everywhere
    cpu::attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(),
                            kbar, s);
  }
  return r;
}

}  // namespace lsgpt::testing
