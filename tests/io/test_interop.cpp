// Runs tools/test_interop.py (lsgpt against transformers' GPT2LMHeadModel and
// the PyTorch reference tools/lsgpt_torch.py) where PyTorch is installed.
#include <gtest/gtest.h>

#include "io_test_support.h"

namespace lsgpt {
namespace {
namespace test_interop {

TEST(Interop, LsgptMatchesTransformersAndTheTorchReference) {
  const auto probe = testing::run_command("python3 -c 'import torch, transformers, safetensors, numpy'");
  if (probe.exit_code != 0)
    GTEST_SKIP() << "python3 with torch, transformers, safetensors and numpy is not available "
                    "here; run tools/test_interop.py on a host that has them (docs/INTEROP.md)";
  testing::ScratchDir work;
  const auto r = testing::run_command(
      "python3 " + testing::quoted(std::string(LSGPT_SOURCE_DIR) + "/tools/test_interop.py") +
      " --lsgpt " + testing::quoted(LSGPT_BINARY) + " --work " + testing::quoted(work.path()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::printf("%s", r.output.c_str());
}

}  // namespace test_interop
}  // namespace
}  // namespace lsgpt
