// The backward kernels' per-row mask intervals (attention_mask_columns.h),
// host-only so they run without a GPU: for every row, base and column of a
// 64-wide tile they must agree with the LS mask as the kernels stated it
// before (HeadMask::visible, plus q < T on the key side), over windows from
// 0 to far past T (INT_MAX included: no overflow), rows past T, and tiles
// before, across and past the band. The static_asserts evaluate the
// windows at INT_MAX at compile time, where a signed overflow is an error.
#include <gtest/gtest.h>

#include <climits>

#include "ops/cuda/attention_mask_columns.h"

namespace lsgpt::cuda::attn {
namespace {
namespace test_attention_mask_columns {

// HeadMask::visible (attention_common.cuh): query i sees key j.
bool visible(bool local, int window, int i, int j) {
  return j <= i && (!local || j > i - window);
}

constexpr int kWindows[] = {0, 1, 2, 7, 63, 64, 65, 100, 129, 1000, INT_MAX};

static_assert(queries_seeing_key(true, INT_MAX, 5, 130, 0).hi == 130);
static_assert(queries_seeing_key(true, INT_MAX, 129, 130, 128).has(1));
static_assert(keys_seen_by_query(true, INT_MAX, 0, 208).lo == -208);
static_assert(keys_seen_by_query(true, INT_MAX, 139, 0).has(0));
static_assert(!keys_seen_by_query(true, 1, 139, 138).has(0));
constexpr int kTs[] = {1, 7, 64, 100, 130};

TEST(AttentionMaskColumns, KeyRowsMatchTheMask) {
  for (bool local : {false, true})
    for (int window : kWindows)
      for (int T : kTs)
        for (int key = 0; key < T + 9; ++key)           // rows past T too (last key block)
          for (int base = 0; base < T + 66; base += 2) {  // a thread's first query column
            const VisibleColumns v = queries_seeing_key(local, window, key, T, base);
            for (int k = 0; k < 64; ++k) {
              const int q = base + k;
              ASSERT_EQ(v.has(k), q < T && visible(local, window, q, key))
                  << "local " << local << " window " << window << " T " << T << " key " << key
                  << " base " << base << " column " << k;
            }
          }
}

TEST(AttentionMaskColumns, QueryRowsMatchTheMask) {
  for (bool local : {false, true})
    for (int window : kWindows)
      for (int query = 0; query < 140; ++query)
        for (int base = 0; base < 210; base += 2) {  // a thread's first key column
          const VisibleColumns v = keys_seen_by_query(local, window, query, base);
          for (int k = 0; k < 64; ++k)
            ASSERT_EQ(v.has(k), visible(local, window, query, base + k))
                << "local " << local << " window " << window << " query " << query << " base "
                << base << " column " << k;
        }
}

}  // namespace test_attention_mask_columns
}  // namespace
}  // namespace lsgpt::cuda::attn
