// Named span settings. Each preset is the outcome of a measurement; the
// evidence is in docs/results/span-wikitext2.md.
#include "core/error.h"
#include "model/config.h"

namespace lsgpt {

SpanConfig SpanConfig::preset(const std::string& name) {
  if (name == "off" || name == "canonical") return SpanConfig{};
  // "0th-order bidirectional parallel spans": cross basis on q and k,
  // alpha_perp = 1, alpha_par from the WikiText-2 study. The GPU study
  // (2026-11-30, 5 seeds, LS and MHSA) put alpha_par = 2 best of {0.5, 1.5,
  // 2, 3}: -0.70% (LS) and -0.90% (MHSA) validation loss, p < 0.001 paired;
  // 0.5, the earlier CPU study's pick, was +1.1 to +1.3% worse than canonical.
  if (name == "bidir0") return SpanConfig::parse("q:cross:2:1,k:cross:2:1");
  fail("unknown span preset '", name, "' (known: bidir0, off)");
}

}  // namespace lsgpt
