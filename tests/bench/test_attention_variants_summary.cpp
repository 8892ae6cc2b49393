// bench/attention_variants_summary.py on two hand-made rows of
// bench_cuda_attention forward_kernels=1: the fastest variant marked, its
// speedup over base, the default's time against the fastest (how good the
// shape-based choice was), and a row without variants (not a Hopper GPU).
#include <gtest/gtest.h>

#include <fstream>

#include "../io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_attention_variants_summary {

using testing::quoted;
using testing::run_command;
using testing::ScratchDir;

const std::string kScript = std::string(LSGPT_SOURCE_DIR) + "/bench/attention_variants_summary.py";

TEST(AttentionVariantsSummary, MarksTheFastestAndRatesTheDefault) {
  ScratchDir dir;
  const std::string results = dir.file("fwd.log");
  std::ofstream(results)
      << "build noise\n"
      << R"({"label": "mhsa", "head_dim": 64, "T": 1024, "fwd_sm80_ms": 0.4, "fwd_default_ms": 0.35,)"
      << R"( "fwd_base_ms": 0.35, "fwd_base_tflops": 197.0, "fwd_ws_ms": 0.28, "fwd_ws_tflops": 246.4})"
      << "\n"
      << R"({"label": "ls", "head_dim": 128, "T": 4096, "fwd_sm80_ms": 0.3, "fwd_default_ms": 0.3})"
      << "\n";
  const auto r = run_command("python3 " + quoted(kScript) + " " + quoted(results));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("| fastest | fastest / base | default ms | fastest / default |"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| mhsa | 64 | 1024 | 0.400 | 0.350 (197) | **0.280 (246)** | ws | "
                          "1.25x | 0.350 | 0.80 |"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| ls | 128 | 4096 | 0.300 | - | - | - | - | 0.300 | - |"),
            std::string::npos)
      << r.output;
}

TEST(AttentionVariantsSummary, RefusesALineThatIsNotJson) {
  ScratchDir dir;
  const std::string results = dir.file("bad.log");
  std::ofstream(results) << "{\"label\": \n";
  const auto r = run_command("python3 " + quoted(kScript) + " " + quoted(results));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("bad.log:1: not JSON"), std::string::npos) << r.output;
}

}  // namespace test_attention_variants_summary
}  // namespace
}  // namespace lsgpt
