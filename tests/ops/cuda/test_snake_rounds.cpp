// The persistent blocks' snake schedule (snake_rounds.h), host-only so it
// runs without a GPU: each block takes items as ws_one_pass's producer and
// consumers do (from round 0 until an item is n_items or beyond, `last` when
// the next one is), and every item must be taken exactly once, each block's
// in increasing order, with `last` on its final one; over grids of 1 to 132
// blocks and item counts from one round to many, partial last rounds
// included. With items longest first (ws_one_pass's order) the snake must
// also keep the blocks' totals closer than plain striding, which is why it
// is there.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "ops/cuda/snake_rounds.h"

namespace lsgpt::cuda {
namespace {
namespace test_snake_rounds {

// The items each block takes, in order, walked as the kernel walks them;
// the kernel's `last` flag must be set on a block's final item only.
std::vector<std::vector<int>> schedule(int blocks, int n_items) {
  std::vector<std::vector<int>> taken(blocks);
  for (int block = 0; block < blocks; ++block) {
    std::vector<bool> last;
    for (int k = 0, item = snake_item(0, blocks, block); item < n_items;
         item = snake_item(++k, blocks, block)) {
      taken[block].push_back(item);
      last.push_back(snake_item(k + 1, blocks, block) >= n_items);
    }
    for (size_t j = 0; j < last.size(); ++j)
      EXPECT_EQ(last[j], j + 1 == last.size()) << "block " << block << ", item " << j;
  }
  return taken;
}

TEST(SnakeRounds, EveryItemOnceInIncreasingOrder) {
  for (int blocks : {1, 2, 3, 7, 64, 131, 132})
    for (int n_items : {blocks, blocks + 1, 2 * blocks - 1, 2 * blocks, 2 * blocks + 1,
                        3 * blocks - 1, 5 * blocks + 3, 17 * blocks}) {
      SCOPED_TRACE("blocks " + std::to_string(blocks) + ", items " + std::to_string(n_items));
      std::vector<int> count(n_items, 0);
      const auto taken = schedule(blocks, n_items);
      for (const auto& items : taken) {
        EXPECT_FALSE(items.empty());  // n_items >= blocks: round 0 gives each one
        EXPECT_TRUE(std::is_sorted(items.begin(), items.end()));
        for (int item : items) {
          ASSERT_GE(item, 0);
          ASSERT_LT(item, n_items);
          ++count[item];
        }
      }
      EXPECT_EQ(std::count(count.begin(), count.end(), 1), n_items);
    }
}

TEST(SnakeRounds, RoundsAlternateDirection) {
  EXPECT_EQ(snake_item(0, 4, 0), 0);
  EXPECT_EQ(snake_item(0, 4, 3), 3);
  EXPECT_EQ(snake_item(1, 4, 0), 7);
  EXPECT_EQ(snake_item(1, 4, 3), 4);
  EXPECT_EQ(snake_item(2, 4, 0), 8);
  static_assert(snake_item(3, 132, 131) == 3 * 132, "odd rounds run backwards");
}

// Items longest first, as ws_one_pass orders them (a head's key block kb
// walks about n_blocks - kb tiles; key block-major over 16 heads): the
// spread of the blocks' total walks, max - min, is what the last blocks
// idle. The snake keeps it within one item; striding grows it with every
// round.
TEST(SnakeRounds, BalancesItemsThatComeLongestFirst) {
  const int blocks = 132, heads = 16, n_blocks = 128;
  const int n_items = heads * n_blocks;
  auto length = [&](int item) { return 2 * (n_blocks - item / heads); };
  std::vector<long> snake(blocks, 0), strided(blocks, 0);
  const auto taken = schedule(blocks, n_items);
  for (int block = 0; block < blocks; ++block) {
    for (int item : taken[block]) snake[block] += length(item);
    for (int item = block; item < n_items; item += blocks) strided[block] += length(item);
  }
  const auto spread = [](const std::vector<long>& v) {
    return *std::max_element(v.begin(), v.end()) - *std::min_element(v.begin(), v.end());
  };
  EXPECT_LE(spread(snake), 2 * n_blocks);  // one item's walk at most
  EXPECT_GT(spread(strided), 4 * spread(snake));
}

}  // namespace test_snake_rounds
}  // namespace
}  // namespace lsgpt::cuda
