// Span/violation row projection (see span_projection.h). The decision worth
// knowing: the rebuilt row is formed as alpha_perp g + (alpha_par - alpha_perp) c u
// rather than from g_par and g_perp separately, which is the same vector but
// rounds to g itself whenever the two alphas are equal.
#include "ops/cpu/span_projection.h"

namespace lsgpt::cpu {

template <typename T>
bool span_project_row(T* g, const T* u, int n, double alpha_par, double alpha_perp) {
  double gu = 0, uu = 0, gg = 0;
  for (int d = 0; d < n; ++d) {
    const double gd = double(g[d]), ud = double(u[d]);
    gu += gd * ud;
    uu += ud * ud;
    gg += gd * gd;
  }
  if (!(uu > kSpanEps * (1 + gg))) return false;
  const double c = (alpha_par - alpha_perp) * (gu / uu);
  for (int d = 0; d < n; ++d) g[d] = T(alpha_perp * double(g[d]) + c * double(u[d]));
  return true;
}

template <typename T>
void span_project_rows(T* g, ptrdiff_t ldg, const T* u, ptrdiff_t ldu, int rows, int n,
                       const SpanTarget& target) {
  for (int r = 0; r < rows; ++r)
    span_project_row(g + r * ldg, u + r * ldu, n, target.alpha_par, target.alpha_perp);
}

template bool span_project_row(float*, const float*, int, double, double);
template bool span_project_row(double*, const double*, int, double, double);
template void span_project_rows(float*, ptrdiff_t, const float*, ptrdiff_t, int, int,
                                const SpanTarget&);
template void span_project_rows(double*, ptrdiff_t, const double*, ptrdiff_t, int, int,
                                const SpanTarget&);

}  // namespace lsgpt::cpu
