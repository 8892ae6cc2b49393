// The CUDA build opens cuBLASLt at its first call instead of linking it
// (src/ops/cublaslt_loader.cpp): the forwarders reach the library's own
// functions, which answer without a GPU, and `lsgpt` starts without opening
// it. No GPU needed, so CI runs these wherever the CUDA backend is built.
#include <gtest/gtest.h>

#ifdef LSGPT_HAVE_CUDA
#include <cublasLt.h>

#include <string>

#include "../io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_cublaslt_loader {

TEST(CublasLtLoader, ForwardsToTheLibraryOfTheHeadersMajorVersion) {
  // cublasLtGetVersion() is major * 10000 + minor * 100 + patch, 0 if the
  // library did not open.
  EXPECT_EQ(cublasLtGetVersion() / 10000, size_t(CUBLAS_VER_MAJOR));
  const std::string status = cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_FALSE(status.empty());
  EXPECT_EQ(status.find("could not be loaded"), std::string::npos) << status;
}

// The reason for the loader: a linked libcublasLt runs its initialisers in
// every process (0.37 s on 2 cores), whether or not it uses a GPU.
TEST(CublasLtLoader, LsgptStartsWithoutOpeningIt) {
  const testing::CommandResult traced =
      testing::run_command("LD_DEBUG=libs " + testing::quoted(LSGPT_BINARY) + " --version");
  ASSERT_EQ(traced.exit_code, 0) << traced.output;
  ASSERT_NE(traced.output.find("libcudart"), std::string::npos)
      << "LD_DEBUG=libs printed no library search: " << traced.output;
  EXPECT_EQ(traced.output.find("libcublasLt"), std::string::npos) << traced.output;
}

}  // namespace test_cublaslt_loader
}  // namespace
}  // namespace lsgpt

#endif  // LSGPT_HAVE_CUDA
