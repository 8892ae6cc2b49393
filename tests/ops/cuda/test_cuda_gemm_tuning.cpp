// Matrix products whose cuBLASLt algorithm is chosen by timing
// (src/ops/cuda/gemm_tuning.h): the results against cpu64, a product that
// accumulates into its output adding once however many candidates were
// timed, the cache file written and read back, and a cache that cannot be
// written or read costing nothing but the file. Each test uses shapes no
// other test in the process runs, so its products are tuned here and not
// taken from the process's cache. Skips with "no CUDA GPU: ..." where there
// is none.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../../io/io_test_support.h"  // ScratchDir
#include "../../support/numeric.h"
#include "core/env_switch.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "ops/backend.h"

namespace lsgpt {
namespace {
namespace test_cuda_gemm_tuning {

using namespace cuda_test;
using testing::relative_error;
using testing::ScratchDir;

std::vector<std::string> cache_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] != '#') lines.push_back(line);
  return lines;
}

// The MLP's two products and their backward at N rows (width C, hidden 4C):
// the GELU-aux-bias and DGELU epilogues and two weight gradients that add
// into nonzero values (beta = 1). Returns every output, tensor by tensor.
std::vector<std::vector<float>> mlp(Backend& be, int N, int C, bool tune) {
  const int H = 4 * C;
  const auto x = bf16_values(size_t(N) * C, 1, -1, 1);
  const auto w1 = bf16_values(size_t(H) * C, 2, -0.05, 0.05), b1 = bf16_values(H, 3, -1, 1);
  const auto w2 = bf16_values(size_t(C) * H, 4, -0.05, 0.05), b2 = bf16_values(C, 5, -1, 1);
  const auto dy = bf16_values(size_t(N) * C, 6, -1, 1);
  const auto dw1_0 = bf16_values(size_t(H) * C, 7, -1, 1), dw2_0 = bf16_values(size_t(C) * H, 8, -1, 1);
  const auto db1_0 = bf16_values(H, 9, -1, 1), db2_0 = bf16_values(C, 10, -1, 1);
  const DType t = be.dtype();
  Buffer X = make_buffer(be, t, x.size(), &x), W1 = make_buffer(be, t, w1.size(), &w1),
         B1 = make_buffer(be, t, b1.size(), &b1), W2 = make_buffer(be, t, w2.size(), &w2),
         B2 = make_buffer(be, t, b2.size(), &b2), DY = make_buffer(be, t, dy.size(), &dy),
         DW1 = make_buffer(be, t, dw1_0.size(), &dw1_0), DW2 = make_buffer(be, t, dw2_0.size(), &dw2_0),
         DB1 = make_buffer(be, t, db1_0.size(), &db1_0), DB2 = make_buffer(be, t, db2_0.size(), &db2_0),
         PRE = make_buffer(be, t, size_t(N) * H, nullptr), HID = make_buffer(be, t, size_t(N) * H, nullptr),
         Y = make_buffer(be, t, size_t(N) * C, nullptr), DHID = make_buffer(be, t, size_t(N) * H, nullptr),
         DX = make_buffer(be, t, size_t(N) * C, nullptr);
  be.set_tuning(tune);
  be.matmul_forward(HID.mem.get(), PRE.mem.get(), X.mem.get(), W1.mem.get(), B1.mem.get(), N, C, H);
  be.matmul_forward(Y.mem.get(), nullptr, HID.mem.get(), W2.mem.get(), B2.mem.get(), N, H, C);
  be.matmul_backward(DHID.mem.get(), DW2.mem.get(), DB2.mem.get(), DY.mem.get(), HID.mem.get(),
                     W2.mem.get(), nullptr, PRE.mem.get(), N, H, C);
  be.matmul_backward(DX.mem.get(), DW1.mem.get(), DB1.mem.get(), DHID.mem.get(), X.mem.get(),
                     W1.mem.get(), nullptr, nullptr, N, C, H);
  be.set_tuning(false);
  be.sync();
  std::vector<std::vector<float>> r;
  for (const Buffer* b : {&PRE, &HID, &Y, &DHID, &DX, &DW1, &DW2, &DB1, &DB2})
    r.push_back(fetch(be, *b));
  return r;
}

void expect_matches(const std::vector<std::vector<float>>& got,
                    const std::vector<std::vector<float>>& ref) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_LE(relative_error(got[i], ref[i]), kBf16Tolerance) << "output " << i;
}

// mlp() on the GPU (tuned) against cpu64 at N rows, width 200.
void tuned_mlp_matches_cpu64(Backend& cuda, int N) {
  expect_matches(mlp(cuda, N, 200, true), mlp(*make_backend("cpu64"), N, 200, false));
}

TEST(CudaGemmTuning, TunedProductsMatchCpu64AndTheCacheFileKeepsThem) {
  REQUIRE_CUDA(cuda);
  ScratchDir dir;
  ScopedEnv cache("LSGPT_CACHE_DIR", dir.path().c_str());
  ScopedEnv on("LSGPT_GEMM_TUNING", "on");
  const int N = 1000, C = 200;
  const auto tuned = mlp(*cuda, N, C, true);
  auto cpu = make_backend("cpu64");
  // The weight gradients started nonzero: an accumulating product timed
  // several times still adds once.
  expect_matches(tuned, mlp(*cpu, N, C, false));

  const std::vector<std::string> lines = cache_lines(dir.file("gemm-algos.tsv"));
  // 4 forward-and-input-gradient products and 2 weight-gradient products.
  EXPECT_GE(lines.size(), 6u);
  for (const std::string& line : lines) {
    std::istringstream fields(line);
    std::string key, words, ms;
    ASSERT_TRUE(std::getline(fields, key, '\t') && std::getline(fields, words, '\t') &&
                std::getline(fields, ms))
        << line;
    EXPECT_NE(key.find(" sm"), std::string::npos) << line;
    EXPECT_EQ(std::count(words.begin(), words.end(), ' '), 7) << line;
    EXPECT_GT(std::stod(ms), 0.0) << line;
  }
  // The choice is kept: the same products again give the same bits.
  EXPECT_EQ(mlp(*cuda, N, C, true), tuned);
  EXPECT_EQ(mlp(*cuda, N, C, false), tuned);
}

TEST(CudaGemmTuning, ACorruptCacheFileIsRewrittenWithoutItsBadLines) {
  REQUIRE_CUDA(cuda);
  ScratchDir dir;
  ScopedEnv cache("LSGPT_CACHE_DIR", dir.path().c_str());
  ScopedEnv on("LSGPT_GEMM_TUNING", "on");
  const std::string path = dir.file("gemm-algos.tsv");
  {
    std::ofstream out(path);
    out << "not a cache line\nkey only\t\nkey\t1 2 3\t0.5\nkey2\tzz zz zz zz zz zz zz zz\t1\n";
    out << "truncated\t1 2 3 4 5 6 7 8\t";  // no newline, no time
  }
  tuned_mlp_matches_cpu64(*cuda, 1016);
  const std::vector<std::string> lines = cache_lines(path);
  EXPECT_GE(lines.size(), 6u);
  for (const std::string& line : lines) {
    EXPECT_EQ(line.find("not a cache line"), std::string::npos);
    EXPECT_NE(line.rfind("key", 0), 0u) << line;
    EXPECT_NE(line.rfind("truncated", 0), 0u) << line;
  }
  for (const auto& name : dir.entries()) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

TEST(CudaGemmTuning, AnUnwritableCacheDirectoryOnlyCostsTheFile) {
  REQUIRE_CUDA(cuda);
  ScratchDir dir;
  { std::ofstream(dir.file("a-file")) << "x"; }
  const std::string below_a_file = dir.file("a-file") + "/cache";
  ScopedEnv cache("LSGPT_CACHE_DIR", below_a_file.c_str());
  ScopedEnv on("LSGPT_GEMM_TUNING", "on");
  tuned_mlp_matches_cpu64(*cuda, 1032);
}

TEST(CudaGemmTuning, OffWritesNoFileAndUnknownValuesAreRefused) {
  REQUIRE_CUDA(cuda);
  ScratchDir dir;
  ScopedEnv cache("LSGPT_CACHE_DIR", dir.path().c_str());
  {
    ScopedEnv off("LSGPT_GEMM_TUNING", "off");
    tuned_mlp_matches_cpu64(*cuda, 1048);
    EXPECT_TRUE(cache_lines(dir.file("gemm-algos.tsv")).empty());
  }
  ScopedEnv bad("LSGPT_GEMM_TUNING", "fast");
  try {
    mlp(*cuda, 1064, 200, true);
    FAIL() << "LSGPT_GEMM_TUNING=fast was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LSGPT_GEMM_TUNING must be on or off, got 'fast'"),
              std::string::npos)
        << e.what();
  }
  cuda->set_tuning(false);
}

}  // namespace test_cuda_gemm_tuning
}  // namespace
}  // namespace lsgpt
