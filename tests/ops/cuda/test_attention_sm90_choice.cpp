// The Hopper attention kernel choice (attention_sm90_choice.h), host-only so
// it runs without a GPU: every shape of bench_cuda_attention's grid maps to
// the variant measured fastest there (or within 2% of it) on an H200,
// 2026-11-30 and 2026-12-01 (docs/BENCHMARKS.md), and the
// edge shapes stay defined.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "ops/cuda/attention_sm90_choice.h"

namespace lsgpt::cuda::attn {
namespace {
namespace test_attention_sm90_choice {

constexpr int kH200Sms = 132;

// bench_cuda_attention's grid: width 2048, 16384 tokens a batch.
AttentionShape grid_shape(const char* setting, int T, int D) {
  const int H = 2048 / D;
  AttentionShape s{16384 / T, T, H, 0, 1, D};
  if (std::string(setting) == "ls_11of12_w100") s.n_local = (11 * H) / 12, s.window = 100;
  if (std::string(setting) == "ls_half_w256") s.n_local = H / 2, s.window = 256;
  return s;
}

using F = Sm90ForwardVariant;
using Bw = Sm90BackwardVariant;

struct Measured {
  const char* setting;
  int D, T;
  F forward;
  Bw backward;
};

// The measured winners (H200). Forward: 2026-12-01, with ws_dynamic (D 64
// with three consumers; LS 11/12 D 64 T 1k again at 23:40 UTC, after the
// ws epilogue's TMA store). Backward: ws won at every shape on 2026-11-30,
// and again on 2026-12-01 with its items from a counter, against band runs
// (ws_band), which had won LS 11/12 at D 64 from T 4k against ws by
// striding. At T 16k where nearly all the work is in global heads the
// ordered one pass (ws_one_pass_ordered) won against ws on 2026-12-02 (4-15%
// at MHSA D 64 and 128 and LS 1/2 D 128; LS 1/2 D 64 a tie, 0.5% behind on
// the mean of two runs, within the 2%).
constexpr Measured kMeasured[] = {
    {"mhsa", 64, 1024, F::ws_dynamic, Bw::ws},
    {"ls_11of12_w100", 64, 1024, F::ws_dynamic, Bw::ws},
    {"ls_half_w256", 64, 1024, F::ws_dynamic, Bw::ws},
    {"mhsa", 64, 4096, F::ws_dynamic, Bw::ws},
    {"ls_11of12_w100", 64, 4096, F::ws_dynamic, Bw::ws},
    {"ls_half_w256", 64, 4096, F::ws_dynamic, Bw::ws},
    {"mhsa", 64, 16384, F::ws_dynamic, Bw::ws_one_pass_ordered},
    {"ls_11of12_w100", 64, 16384, F::ws_dynamic, Bw::ws},
    {"ls_half_w256", 64, 16384, F::ws_dynamic, Bw::ws_one_pass_ordered},
    {"mhsa", 128, 1024, F::ws_dynamic, Bw::ws},
    {"ls_11of12_w100", 128, 1024, F::ws_dynamic, Bw::ws},
    {"ls_half_w256", 128, 1024, F::ws_dynamic, Bw::ws},
    {"mhsa", 128, 4096, F::ws_dynamic, Bw::ws},
    {"ls_11of12_w100", 128, 4096, F::ws_dynamic, Bw::ws},
    {"ls_half_w256", 128, 4096, F::ws_dynamic, Bw::ws},
    {"mhsa", 128, 16384, F::ws, Bw::ws_one_pass_ordered},
    {"ls_11of12_w100", 128, 16384, F::ws, Bw::ws},
    {"ls_half_w256", 128, 16384, F::ws, Bw::ws_one_pass_ordered},
};

TEST(AttentionSm90Choice, PicksTheMeasuredWinnerOnTheBenchmarkGrid) {
  for (const Measured& m : kMeasured) {
    SCOPED_TRACE(std::string(m.setting) + " D " + std::to_string(m.D) + " T " +
                 std::to_string(m.T));
    const AttentionShape s = grid_shape(m.setting, m.T, m.D);
    EXPECT_EQ(int(choose_sm90_forward(s, kH200Sms)), int(m.forward));
    EXPECT_EQ(int(choose_sm90_backward(s, kH200Sms)), int(m.backward));
  }
}

TEST(AttentionSm90Choice, LocalWorkShare) {
  AttentionShape s{1, 1000, 4, 0, 100, 64};
  EXPECT_EQ(local_work_share(s), 0.0);  // MHSA
  s.n_local = 4;
  EXPECT_EQ(local_work_share(s), 1.0);  // every head local
  s.n_local = 2, s.window = 1000;       // a window as long as T is causal
  EXPECT_DOUBLE_EQ(local_work_share(s), 0.5);
  s.window = 5000;  // longer than T: the same
  EXPECT_DOUBLE_EQ(local_work_share(s), 0.5);
  s.window = 1;  // one key a row against T (T + 1) / 2
  EXPECT_DOUBLE_EQ(local_work_share(s), 1000.0 / (1000.0 + 1000.0 * 1001.0 / 2));
  EXPECT_EQ(local_work_share({1, 0, 4, 2, 100, 64}), 0.0);  // no rows
  EXPECT_EQ(local_work_share({1, 100, 0, 0, 100, 64}), 0.0);  // no heads
}

// GPT-2 small's training shape (B 16, T 1024, 12 heads of 64): LS 11/12
// and MHSA take ws_dynamic forward, every head local takes base; LS 11/12
// with 32 heads, and GPT-2 small's on a GPU of a third the
// multiprocessors, take ws_dynamic too. The backward is ws for all (with
// or without qbar at D 64).
TEST(AttentionSm90Choice, Gpt2Small) {
  EXPECT_EQ(int(choose_sm90_forward({16, 1024, 12, 11, 100, 64}, kH200Sms)), int(F::ws_dynamic));
  EXPECT_EQ(int(choose_sm90_forward({16, 1024, 12, 0, 1, 64}, kH200Sms)), int(F::ws_dynamic));
  EXPECT_EQ(int(choose_sm90_forward({16, 1024, 12, 12, 100, 64}, kH200Sms)), int(F::base));
  EXPECT_EQ(int(choose_sm90_forward({16, 1024, 32, 29, 100, 64}, kH200Sms)), int(F::ws_dynamic));
  EXPECT_EQ(int(choose_sm90_forward({16, 1024, 12, 11, 100, 64}, 44)), int(F::ws_dynamic));
  EXPECT_EQ(int(choose_sm90_forward({0, 0, 12, 11, 100, 64}, kH200Sms)), int(F::ws_dynamic));
  EXPECT_EQ(int(choose_sm90_backward({16, 1024, 12, 11, 100, 64}, kH200Sms)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward({16, 1024, 12, 12, 100, 64}, kH200Sms)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward({16, 1024, 12, 0, 1, 64}, kH200Sms)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward({16, 1024, 12, 11, 100, 64, true}, kH200Sms)), int(Bw::ws));
}

// D 128 with qbar (the span's cross basis on k) leaves ws one consumer a
// block: there wg2 needs two blocks a multiprocessor from the global heads
// alone, the GPU's size moves the boundary, and all-local heads never take
// it. Without qbar the same shapes take ws.
TEST(AttentionSm90Choice, BackwardDependsOnQbarTheGlobalHeadsAndTheGpu) {
  const AttentionShape s{2, 4096, 16, 14, 100, 128, true};  // 2 * 2 * 32 = 128 global blocks
  EXPECT_EQ(int(choose_sm90_backward(s, 64)), int(Bw::wg2));
  EXPECT_EQ(int(choose_sm90_backward(s, 65)), int(Bw::base));
  EXPECT_EQ(int(choose_sm90_backward({64, 4096, 16, 16, 100, 128, true}, kH200Sms)),
            int(Bw::base));
  EXPECT_EQ(int(choose_sm90_backward({0, 0, 16, 0, 1, 128, true}, kH200Sms)), int(Bw::base));
  AttentionShape no_qbar = s;
  no_qbar.span_qbar = false;
  EXPECT_EQ(int(choose_sm90_backward(no_qbar, 64)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward({0, 0, 16, 0, 1, 128}, kH200Sms)), int(Bw::ws));
}

// The span's cross basis on k takes its own pass at D 128 (head dims 72 to
// 128, padded), where qbar would leave ws one consumer; at D 64 and below
// ws holds qbar itself; without the cross basis there is nothing to form.
TEST(AttentionSm90Choice, KeyDirectionPassAtD128) {
  for (int D : {32, 64, 72, 128})
    for (bool cross_k : {false, true}) {
      const AttentionShape s{4, 4096, 16, 14, 100, D, cross_k};
      EXPECT_EQ(key_direction_pass_pays(s), cross_k && D > 64) << "D " << D;
    }
}

// ws's two fixed slots (ws_backward_short_walks): D 64 without qbar where a
// quarter of the work or more is band rows. GPT-2 small's LS layer, the
// grid's LS 11/12 up to T 4k and LS 1/2 at T 1k take them; MHSA, LS 1/2 at
// T 4k and 16k, LS 11/12 at T 16k, D 128 and qbar do not.
TEST(AttentionSm90Choice, BackwardShortWalks) {
  EXPECT_TRUE(ws_backward_short_walks({16, 1024, 12, 11, 100, 64}));
  EXPECT_TRUE(ws_backward_short_walks({16, 1024, 12, 12, 100, 64}));
  EXPECT_FALSE(ws_backward_short_walks({16, 1024, 12, 0, 1, 64}));
  EXPECT_TRUE(ws_backward_short_walks({16, 1024, 12, 11, 100, 48}));  // pads to 64
  EXPECT_FALSE(ws_backward_short_walks({16, 1024, 12, 11, 100, 64, true}));
  EXPECT_FALSE(ws_backward_short_walks({16, 1024, 12, 11, 100, 128}));
  EXPECT_TRUE(ws_backward_short_walks(grid_shape("ls_11of12_w100", 1024, 64)));
  EXPECT_TRUE(ws_backward_short_walks(grid_shape("ls_11of12_w100", 4096, 64)));
  EXPECT_FALSE(ws_backward_short_walks(grid_shape("ls_11of12_w100", 16384, 64)));
  EXPECT_TRUE(ws_backward_short_walks(grid_shape("ls_half_w256", 1024, 64)));  // share 0.30
  EXPECT_FALSE(ws_backward_short_walks(grid_shape("ls_half_w256", 4096, 64)));
  EXPECT_FALSE(ws_backward_short_walks(grid_shape("ls_half_w256", 16384, 64)));
  EXPECT_FALSE(ws_backward_short_walks(grid_shape("mhsa", 1024, 64)));
  EXPECT_FALSE(ws_backward_short_walks({0, 0, 12, 0, 1, 64}));  // no rows
}

// Head groups (ws_backward_head_group) at D 128, and at D 64 where the
// global heads give each consumer 8 items or more: the grid's MHSA and LS
// 1/2 at every T (LS 1/2 D 64 T 16k: 8,192 items for 396 consumers), not
// LS 11/12 at D 64 (w 100: 1,536 global items for 396 consumers at T 1k)
// nor GPT-2 small's LS layer (512); MHSA at D 64, T 4k with B 1 and 4
// heads has 512 items: one group on 132 multiprocessors, groups on 16. The
// size: the most pairs from 2 to 4 whose Q, K, V, dO (4 T D bf16 values)
// fit in 16 MiB.
TEST(AttentionSm90Choice, BackwardHeadGroups) {
  for (int D : {64, 128})
    for (int T : {1024, 4096, 16384}) {
      SCOPED_TRACE("D " + std::to_string(D) + " T " + std::to_string(T));
      const int size = std::clamp((16 << 20) / (8 * T * D), 2, 4);
      EXPECT_EQ(ws_backward_head_group(grid_shape("mhsa", T, D), kH200Sms), size);
      EXPECT_EQ(ws_backward_head_group(grid_shape("ls_half_w256", T, D), kH200Sms), size);
      EXPECT_EQ(ws_backward_head_group(grid_shape("ls_11of12_w100", T, D), kH200Sms),
                D == 128 ? size : 0);
    }
  // 4 at T 1k and D 128 T 4k (4 MiB a pair), 2 at D 64 T 16k (8 MiB) and
  // D 128 T 16k (16 MiB: one would fit; never fewer than 2).
  EXPECT_EQ(ws_backward_head_group(grid_shape("mhsa", 1024, 64), kH200Sms), 4);
  EXPECT_EQ(ws_backward_head_group(grid_shape("mhsa", 4096, 128), kH200Sms), 4);
  EXPECT_EQ(ws_backward_head_group(grid_shape("mhsa", 16384, 64), kH200Sms), 2);
  EXPECT_EQ(ws_backward_head_group(grid_shape("mhsa", 16384, 128), kH200Sms), 2);
  EXPECT_EQ(ws_backward_head_group({1, 1 << 20, 32, 0, 1, 128}, kH200Sms), 2);
  EXPECT_EQ(ws_backward_head_group({16, 1024, 12, 11, 100, 64}, kH200Sms), 0);  // GPT-2 LS
  EXPECT_EQ(ws_backward_head_group({16, 1024, 12, 0, 1, 64}, kH200Sms), 4);     // and MHSA
  EXPECT_EQ(ws_backward_head_group({1, 4096, 4, 0, 1, 64}, kH200Sms), 0);
  EXPECT_EQ(ws_backward_head_group({1, 4096, 4, 0, 1, 64}, 16), 4);
  EXPECT_EQ(ws_backward_head_group({1, 4096, 4, 0, 1, 64}, 0), 4);  // 0 SMs taken as 1
  EXPECT_EQ(ws_backward_head_group({1, 4096, 4, 0, 1, 128}, kH200Sms), 4);  // D 128: any
  EXPECT_EQ(ws_backward_head_group({0, 0, 12, 0, 1, 64}, kH200Sms), 0);  // no rows
  EXPECT_EQ(ws_backward_head_group({0, 0, 12, 0, 1, 128}, kH200Sms), 0);
  EXPECT_EQ(ws_backward_head_group({0, 4096, 12, 0, 1, 128}, kH200Sms), 0);  // B 0
  EXPECT_EQ(ws_backward_head_group({4, 4096, 0, 0, 1, 128}, kH200Sms), 0);   // no heads
  EXPECT_EQ(ws_backward_head_group({4, 4096, 32, 32, 100, 64}, kH200Sms), 0);  // all local
  // qbar's fewer consumers a block (two at D 64) make more items each:
  // LS 29/32 at B 8, T 4k has 3,072 global items, 7.8 for 396 consumers
  // without qbar, 11.6 for 264 with it.
  EXPECT_EQ(ws_backward_head_group({8, 4096, 32, 29, 100, 64}, kH200Sms), 0);
  EXPECT_EQ(ws_backward_head_group({8, 4096, 32, 29, 100, 64, true}, kH200Sms), 4);
}

// ws_band: the query tiles a local 64-key block walks, (w + 62) / 64 + 1
// (w 1: its own tile; w 2 to 65: two; w 100: three; w 449: eight), and
// its dQ slots; band runs only at D 64 (48 pads to it) without qbar, with
// local heads.
TEST(AttentionSm90Choice, BandTilesAndWhereBandRunsApply) {
  EXPECT_EQ(ws_band_tiles(1), 1);
  EXPECT_EQ(ws_band_tiles(2), 2);
  EXPECT_EQ(ws_band_tiles(65), 2);
  EXPECT_EQ(ws_band_tiles(66), 3);
  EXPECT_EQ(ws_band_tiles(100), 3);
  EXPECT_EQ(ws_band_tiles(129), 3);
  EXPECT_EQ(ws_band_tiles(130), 4);
  EXPECT_EQ(ws_band_tiles(256), 5);
  EXPECT_EQ(ws_band_tiles(449), 8);
  // dQ part-sum slots: one fewer than the tiles, at least one.
  EXPECT_EQ(ws_band_slots(1), 1);
  EXPECT_EQ(ws_band_slots(2), 1);
  EXPECT_EQ(ws_band_slots(66), 2);
  EXPECT_EQ(ws_band_slots(100), 2);
  EXPECT_EQ(ws_band_slots(256), 4);
  EXPECT_TRUE(ws_band_applies({16, 1024, 12, 11, 100, 64}));
  EXPECT_TRUE(ws_band_applies({16, 1024, 12, 11, 100, 48}));
  EXPECT_FALSE(ws_band_applies({16, 1024, 12, 11, 100, 32}));   // sm_80's head dims
  EXPECT_FALSE(ws_band_applies({16, 1024, 12, 11, 100, 128}));
  EXPECT_FALSE(ws_band_applies({16, 1024, 12, 11, 100, 64, true}));
  EXPECT_FALSE(ws_band_applies({16, 1024, 12, 0, 1, 64}));
  EXPECT_TRUE(ws_band_applies({16, 1024, 12, 6, 449, 64}));    // eight tiles
  EXPECT_FALSE(ws_band_applies({16, 1024, 12, 6, 450, 64}));   // nine: ws
  EXPECT_TRUE(ws_band_applies({16, 300, 12, 6, 5000, 64}));    // T cuts the band to six
}

// The default run: about two runs a consumer (3 a multiprocessor), at
// least 8 key blocks (or the whole head when shorter), at most the head.
TEST(AttentionSm90Choice, BandRunLength) {
  // GPT-2 small's layer: 16 x 11 heads x 16 blocks / (6 x 132) = 3.6 -> 8.
  EXPECT_EQ(ws_band_run({16, 1024, 12, 11, 100, 64}, kH200Sms), 8);
  // LS 11/12 at T 4k, B 4, 32 heads (29 local): 4 x 29 x 64 / 792 = 9.4.
  EXPECT_EQ(ws_band_run({4, 4096, 32, 29, 100, 64}, kH200Sms), 9);
  EXPECT_EQ(ws_band_run({1, 100, 2, 1, 5, 64}, kH200Sms), 2);      // a 2-block head
  EXPECT_EQ(ws_band_run({64, 16384, 32, 32, 100, 64}, 1), 256);   // capped at the head
  EXPECT_EQ(ws_band_run({1, 1, 1, 1, 1, 64}, 0), 1);
}

// The deterministic choice never sums dQ by atomics: where the one pass
// pays (T 16k and beyond, under 5% of the work in local heads, no qbar) it
// takes the ordered one pass. Without that promise
// (LSGPT_ATTENTION_DETERMINISTIC=0) ws_one_pass runs there, where it
// matched or beat ws on the H200 (MHSA and LS 1/2 at T 16k, D 64 and 128),
// but not where it lost (T 1k and 4k), not with qbar, and not with 5% or
// more of the work in local heads (LS 11/12 at T 16k, unmeasured).
TEST(AttentionSm90Choice, LongGlobalWorkTakesTheOnePass) {
  for (const Measured& m : kMeasured) {
    SCOPED_TRACE(std::string(m.setting) + " D " + std::to_string(m.D) + " T " +
                 std::to_string(m.T));
    const AttentionShape s = grid_shape(m.setting, m.T, m.D);
    const bool wins = m.T == 16384 && std::string(m.setting) != "ls_11of12_w100";
    EXPECT_EQ(int(choose_sm90_backward(s, kH200Sms, false)),
              int(wins ? Bw::ws_one_pass : m.backward));
    EXPECT_EQ(int(choose_sm90_backward(s, kH200Sms, true)),
              int(wins ? Bw::ws_one_pass_ordered : Bw::ws));
  }
  const AttentionShape mhsa_32k{1, 32768, 16, 0, 1, 128};
  EXPECT_EQ(int(choose_sm90_backward(mhsa_32k, kH200Sms, false)), int(Bw::ws_one_pass));
  EXPECT_EQ(int(choose_sm90_backward(mhsa_32k, kH200Sms, true)), int(Bw::ws_one_pass_ordered));
  AttentionShape shorter = mhsa_32k;
  shorter.T = 16383;
  EXPECT_EQ(int(choose_sm90_backward(shorter, kH200Sms, false)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward(shorter, kH200Sms, true)), int(Bw::ws));
  AttentionShape qbar = mhsa_32k;
  qbar.span_qbar = true;
  for (bool deterministic : {false, true}) {
    const int chosen = int(choose_sm90_backward(qbar, kH200Sms, deterministic));
    EXPECT_NE(chosen, int(Bw::ws_one_pass));
    EXPECT_NE(chosen, int(Bw::ws_one_pass_ordered));
  }
  // 2 of 16 heads local at w 8192, T 16384: 9.7% of the work (1 of 16: 4.8%).
  const AttentionShape local{1, 16384, 16, 2, 8192, 64};
  EXPECT_NEAR(local_work_share(local), 0.097, 0.001);
  EXPECT_EQ(int(choose_sm90_backward(local, kH200Sms, false)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward(local, kH200Sms, true)), int(Bw::ws));
  EXPECT_EQ(int(choose_sm90_backward({1, 16384, 16, 1, 8192, 64}, kH200Sms, false)),
            int(Bw::ws_one_pass));
  EXPECT_EQ(int(choose_sm90_backward({1, 16384, 16, 1, 8192, 64}, kH200Sms, true)),
            int(Bw::ws_one_pass_ordered));
}

}  // namespace test_attention_sm90_choice
}  // namespace
}  // namespace lsgpt::cuda::attn
