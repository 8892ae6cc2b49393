// Named span settings. Each preset is the outcome of a measurement; the
// evidence is in docs/results/span-wikitext2.md.
#include "core/error.h"
#include "model/config.h"

namespace lsgpt {

SpanConfig SpanConfig::preset(const std::string& name) {
  if (name == "off" || name == "canonical") return SpanConfig{};
  // "0th-order bidirectional parallel spans": cross basis on q and k,
  // alpha_perp = 1, alpha_par from the WikiText-2 study.
  if (name == "bidir0") return SpanConfig::parse("q:cross:0.5:1,k:cross:0.5:1");
  fail("unknown span preset '", name, "' (known: bidir0, off)");
}

}  // namespace lsgpt
