// CPU attention decode: feeding a sequence token by token through the KV
// cache reproduces every row of attention_forward over the whole sequence bit
// for bit (the kernels share their tile functions), with ring wrap-around
// (w < T), w >= T, caches longer than the sequence, MHSA, all-local and B > 1;
// the caches hold exactly the keys and values of the documented slots.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "../../support/numeric.h"
#include "test_attention_reference.h"

namespace lsgpt {
namespace {
namespace test_attention_decode {

using testing::random_vector;
using testing::relative_error;

struct DecodeCase {
  int B, T, H, D, n_local, window, max_T;
};

template <typename T>
void check_decode(const DecodeCase& c) {
  SCOPED_TRACE(::testing::Message()
               << "B=" << c.B << " T=" << c.T << " H=" << c.H << " D=" << c.D
               << " n_local=" << c.n_local << " w=" << c.window << " max_T=" << c.max_T);
  const AttentionSpec fs = testing::make_attention_spec(c.B, c.T, c.H, c.D, c.n_local, c.window);
  const int C = fs.C(), n_global = c.H - c.n_local;
  const auto qkv_d = random_vector<double>(size_t(c.B) * c.T * 3 * C, 4242 + c.T, -1.5, 1.5);
  const auto full = testing::run_cpu_attention<T>(qkv_d, {}, fs);
  const auto ref = testing::reference_attention(qkv_d, {}, fs);
  const std::vector<T> qkv(qkv_d.begin(), qkv_d.end());

  DecodeSpec ds;
  ds.B = c.B, ds.n_head = c.H, ds.head_dim = c.D, ds.n_local = c.n_local;
  ds.window = c.window, ds.max_T = c.max_T;
  const int slots = ds.local_slots();
  std::vector<T> k_local(size_t(c.B) * c.n_local * slots * c.D, T(0)), v_local(k_local.size());
  std::vector<T> k_global(size_t(c.B) * n_global * c.max_T * c.D, T(0)), v_global(k_global.size());
  auto ptr = [](std::vector<T>& v) { return v.empty() ? nullptr : v.data(); };
  std::vector<T> step(size_t(c.B) * 3 * C), out(size_t(c.B) * C), decoded(full.out.size());
  for (int pos = 0; pos < c.T; ++pos) {
    for (int b = 0; b < c.B; ++b)
      std::copy_n(&qkv[(size_t(b) * c.T + pos) * 3 * C], 3 * C, &step[size_t(b) * 3 * C]);
    ds.pos = pos;
    cpu::attention_decode(out.data(), ptr(k_local), ptr(v_local), ptr(k_global), ptr(v_global),
                          step.data(), ds);
    for (int b = 0; b < c.B; ++b)
      std::copy_n(&out[size_t(b) * C], C, &decoded[(size_t(b) * c.T + pos) * C]);
  }
  ASSERT_EQ(0, std::memcmp(decoded.data(), full.out.data(), decoded.size() * sizeof(T)))
      << "relative error " << relative_error(decoded, full.out);
  EXPECT_LT(relative_error(decoded, ref.out), sizeof(T) == 4 ? 1e-5 : 1e-12);

  // Cache contents: the last position written to each slot.
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const bool local = h < c.n_local;
      const int n_slots = local ? slots : c.max_T;
      for (int slot = 0; slot < n_slots; ++slot) {
        int pos = -1;
        for (int p = 0; p < c.T; ++p)
          if ((local ? p % slots : p) == slot) pos = p;
        const size_t at = local ? ((size_t(b) * c.n_local + h) * slots + slot) * c.D
                                : ((size_t(b) * n_global + h - c.n_local) * c.max_T + slot) * c.D;
        const T* kc = local ? &k_local[at] : &k_global[at];
        const T* vc = local ? &v_local[at] : &v_global[at];
        for (int d = 0; d < c.D; ++d) {
          const size_t src = (size_t(b) * c.T + pos) * 3 * C + size_t(h) * c.D + d;
          ASSERT_EQ(kc[d], pos < 0 ? T(0) : qkv[src + C])
              << "b " << b << " h " << h << " slot " << slot;
          ASSERT_EQ(vc[d], pos < 0 ? T(0) : qkv[src + 2 * C]);
        }
      }
    }
}

const DecodeCase kCases[] = {
    {1, 1, 1, 1, 0, 1, 1},      // a single token
    {2, 13, 3, 8, 2, 4, 13},    // ring wrap-around, B > 1
    {1, 20, 2, 5, 2, 1, 20},    // w = 1, all heads local
    {2, 9, 3, 7, 3, 20, 9},     // w >= T = max_T: slots = max_T
    {1, 11, 3, 6, 1, 30, 16},   // w > max_T > T
    {2, 15, 2, 4, 0, 3, 15},    // MHSA: no local cache at all
    {2, 40, 4, 33, 3, 17, 50},  // full register tiles, cache longer than the sequence
    {1, 70, 2, 64, 1, 35, 70},  // several forward blocks per head
};

TEST(AttentionDecode, MatchesForwardRowsInFloat) {
  for (const DecodeCase& c : kCases) check_decode<float>(c);
}

TEST(AttentionDecode, MatchesForwardRowsInDouble) {
  for (const DecodeCase& c : kCases) check_decode<double>(c);
}

}  // namespace test_attention_decode
}  // namespace
}  // namespace lsgpt
