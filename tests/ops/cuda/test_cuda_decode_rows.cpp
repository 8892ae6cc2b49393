// The engine's decode ops on the GPU against the CPU backend in double
// precision, on bf16-exact random caches: attention_decode with per-row
// positions and cache rows (idle rows, rows at very different positions,
// split-KV for long global contexts, local ring buffers that have wrapped),
// kv_cache_write (the prefill's copy into one cache entry) and
// embedding_decode. Skipped without a CUDA GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "cuda_test_util.h"

namespace lsgpt {
namespace {
namespace test_cuda_decode_rows {

using cuda_test::bf16_values;
using cuda_test::cuda_backend;
using cuda_test::kBf16Tolerance;

// A backend buffer holding `values` in the backend's element type.
DeviceBuffer upload_values(Backend& be, const std::vector<float>& values) {
  DeviceBuffer buf(be, values.size() * dtype_size(be.dtype()));
  be.upload_f32(buf.get(), be.dtype(), values.data(), values.size());
  return buf;
}

std::vector<float> download_values(Backend& be, const DeviceBuffer& buf, size_t n) {
  std::vector<float> out(n);
  be.download_f32(out.data(), buf.get(), be.dtype(), n);
  return out;
}

DeviceBuffer upload_ints(Backend& be, const std::vector<int32_t>& v) {
  DeviceBuffer buf(be, v.size() * sizeof(int32_t));
  be.upload(buf.get(), v.data(), v.size() * sizeof(int32_t));
  return buf;
}

struct DecodeRowsCase {
  int head_dim, n_local, window, max_T;
};

// Runs one decode step of 4 rows (one idle) over 3 cache entries on `be`;
// returns the output and the caches afterwards.
struct DecodeResult {
  std::vector<float> out, k_local, k_global, v_global;
};

DecodeResult decode_rows(Backend& be, const DecodeRowsCase& c, bool split) {
  const int B = 4, entries = 3, H = 4, D = c.head_dim, C = H * D;
  DecodeSpec spec;
  spec.B = B, spec.n_head = H, spec.head_dim = D, spec.n_local = c.n_local;
  spec.window = c.window, spec.max_T = c.max_T, spec.cache_B = entries;
  const size_t local = size_t(entries) * c.n_local * spec.local_slots() * D;
  const size_t global = size_t(entries) * (H - c.n_local) * c.max_T * D;
  DeviceBuffer k_local = upload_values(be, bf16_values(local, 1, -1, 1));
  DeviceBuffer v_local = upload_values(be, bf16_values(local, 2, -1, 1));
  DeviceBuffer k_global = upload_values(be, bf16_values(global, 3, -1, 1));
  DeviceBuffer v_global = upload_values(be, bf16_values(global, 4, -1, 1));
  DeviceBuffer qkv = upload_values(be, bf16_values(size_t(B) * 3 * C, 5, -2, 2));
  // Rows at the end of the cache, mid-way, near the start, and idle; entries
  // out of order.
  DeviceBuffer positions = upload_ints(be, {c.max_T - 1, c.max_T / 2 + 3, 2, -1});
  DeviceBuffer rows = upload_ints(be, {2, 0, 1, 0});
  spec.positions = positions.as<int32_t>(), spec.cache_rows = rows.as<int32_t>();
  DeviceBuffer workspace;
  if (split) {
    spec.num_splits = 0;
    workspace = DeviceBuffer(be, std::max<size_t>(1, be.attention_decode_workspace_bytes(spec)));
    be.zero(workspace.get(), workspace.bytes());
    spec.workspace = workspace.get();
  }
  DeviceBuffer out = upload_values(be, std::vector<float>(size_t(B) * C, 7.0f));  // poison
  be.attention_decode(out.get(), k_local.get(), v_local.get(), k_global.get(), v_global.get(),
                      qkv.get(), spec);
  if (split) {  // again on the same workspace: the split counters must have been reset
    const std::vector<float> first = download_values(be, out, size_t(B) * C);
    be.attention_decode(out.get(), k_local.get(), v_local.get(), k_global.get(),
                        v_global.get(), qkv.get(), spec);
    EXPECT_EQ(first, download_values(be, out, size_t(B) * C)) << "second step differs";
  }
  return {download_values(be, out, size_t(B) * C), download_values(be, k_local, local),
          download_values(be, k_global, global), download_values(be, v_global, global)};
}

class CudaDecodeRows : public ::testing::TestWithParam<DecodeRowsCase> {};

TEST_P(CudaDecodeRows, MatchesCpu64WithAndWithoutSplits) {
  REQUIRE_CUDA(cuda);
  auto cpu64 = make_backend("cpu64");
  const DecodeResult want = decode_rows(*cpu64, GetParam(), false);
  for (bool split : {false, true}) {
    const DecodeResult got = decode_rows(*cuda, GetParam(), split);
    EXPECT_LE(testing::relative_error(got.out, want.out), kBf16Tolerance) << "split " << split;
    // The idle row (3) is zeros; the caches took the new keys and values
    // exactly (copies of bf16 values), and nothing else changed.
    const int C = 4 * GetParam().head_dim;
    for (int i = 3 * C; i < 4 * C; ++i) ASSERT_EQ(got.out[i], 0.0f);
    EXPECT_EQ(got.k_local, want.k_local);
    EXPECT_EQ(got.k_global, want.k_global);
    EXPECT_EQ(got.v_global, want.v_global);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDecodeRows,
                         ::testing::Values(DecodeRowsCase{64, 3, 100, 4096},
                                           DecodeRowsCase{128, 2, 37, 2000},
                                           DecodeRowsCase{64, 0, 1, 1500},
                                           DecodeRowsCase{64, 4, 8, 64},
                                           DecodeRowsCase{32, 1, 1, 700}),
                         [](const auto& info) {
                           const DecodeRowsCase& c = info.param;
                           return "D" + std::to_string(c.head_dim) + "_local" +
                                  std::to_string(c.n_local) + "_w" + std::to_string(c.window) +
                                  "_T" + std::to_string(c.max_T);
                         });

TEST(CudaDecodeRows, KvCacheWriteAndEmbeddingDecodeMatchCpu64) {
  REQUIRE_CUDA(cuda);
  auto cpu64 = make_backend("cpu64");
  const int H = 4, D = 64, C = H * D, T = 300, entries = 3;
  DecodeSpec spec;
  spec.n_head = H, spec.head_dim = D, spec.n_local = 3, spec.window = 100, spec.max_T = 512;
  spec.cache_B = entries, spec.B = 1;
  const size_t local = size_t(entries) * 3 * 100 * D, global = size_t(entries) * 512 * D;
  const std::vector<float> qkv = bf16_values(size_t(T) * 3 * C, 9, -1, 1);
  auto run = [&](Backend& be) {
    DeviceBuffer kl = upload_values(be, std::vector<float>(local, 0.5f));
    DeviceBuffer vl = upload_values(be, std::vector<float>(local, 0.5f));
    DeviceBuffer kg = upload_values(be, std::vector<float>(global, 0.5f));
    DeviceBuffer vg = upload_values(be, std::vector<float>(global, 0.5f));
    DeviceBuffer q = upload_values(be, qkv);
    be.kv_cache_write(kl.get(), vl.get(), kg.get(), vg.get(), q.get(), T, 1, spec);
    std::vector<float> all = download_values(be, kl, local);
    for (const DeviceBuffer* b : {&vl, &kg, &vg}) {
      const std::vector<float> part = download_values(be, *b, b == &vl ? local : global);
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  };
  EXPECT_EQ(run(*cuda), run(*cpu64));

  const int B = 5, V = 97, P = 40;
  const std::vector<float> wte = bf16_values(size_t(V) * C, 11, -1, 1);
  const std::vector<float> wpe = bf16_values(size_t(P) * C, 12, -1, 1);
  auto embed = [&](Backend& be) {
    DeviceBuffer te = upload_values(be, wte), pe = upload_values(be, wpe);
    DeviceBuffer tokens = upload_ints(be, {5, 96, 0, 17, 5});
    DeviceBuffer positions = upload_ints(be, {0, 39, -1, 12, 7});
    DeviceBuffer out(be, size_t(B) * C * dtype_size(be.dtype()));
    be.embedding_decode(out.get(), tokens.as<int32_t>(), positions.as<int32_t>(), te.get(),
                        pe.get(), B, C);
    return download_values(be, out, size_t(B) * C);
  };
  EXPECT_LE(testing::relative_error(embed(*cuda), embed(*cpu64)), 4e-3);
}

}  // namespace test_cuda_decode_rows
}  // namespace
}  // namespace lsgpt
