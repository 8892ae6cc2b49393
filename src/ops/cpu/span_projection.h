// The row projection of the span/violation gradient decomposition (docs/SPAN.md,
// lsgpt's reconstruction of arXiv:2512.13033): a gradient row g is split along
// its direction u into the span part g_par = (g.u / u.u) u and the violation
// g_perp = g - g_par, and rebuilt as g' = alpha_par g_par + alpha_perp g_perp.
// The attention backward kernels call it once per rewritten row.
#pragma once

#include <cstddef>

#include "ops/attention_spec.h"

namespace lsgpt::cpu {

// A direction is treated as absent (the row is left unchanged) when
// u.u <= kSpanEps * (1 + g.g), e.g. the mean query of a key nobody attended.
inline constexpr double kSpanEps = 1e-12;

// Rewrites g[0, n) in place as alpha_par g_par + alpha_perp g_perp along u.
// Computed as alpha_perp g + (alpha_par - alpha_perp) (g.u / u.u) u, with the
// dot products in double, so equal alphas scale g exactly (alphas 1 leave it
// bit-identical). Returns false, leaving g untouched, when u is absent.
template <typename T>
bool span_project_row(T* g, const T* u, int n, double alpha_par, double alpha_perp);

// span_project_row for the rows r in [0, rows) of g (leading dimension ldg)
// with directions u (leading dimension ldu), using the target's alphas.
template <typename T>
void span_project_rows(T* g, ptrdiff_t ldg, const T* u, ptrdiff_t ldu, int rows, int n,
                       const SpanTarget& target);

}  // namespace lsgpt::cpu
