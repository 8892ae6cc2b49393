// DataParallel in one process (the single-process communicator, CPU): the
// per-tensor sums of squares that per-tensor clipping (AdaGC) needs, against
// a long double reference over fresh random gradients, and per-tensor
// gradient scales in the sharded AdamW step against the global scale. The
// multi-rank behaviour is tested through mpirun (test_data_parallel_cli.cpp).
#include <gtest/gtest.h>

#include <random>

#include "dist/data_parallel.h"
#include "dist/local_communicator.h"
#include "model/gpt.h"
#include "ops/backend.h"

namespace lsgpt {
namespace {
namespace test_data_parallel {

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layer = 2, c.n_head = 2, c.d_model = 32, c.seq_len = 16, c.vocab_size = 97;
  c.n_local = {1, 1};
  c.window = 4;
  return c;
}

struct Rank {  // one rank: backend, model, DataParallel after one micro-batch
  std::unique_ptr<Backend> be = make_backend("cpu");
  LocalCommunicator comm{*be};
  GPT model{tiny_config(), *be, plan_shards(make_param_layout(tiny_config()).total, 1).padded()};
  std::unique_ptr<DataParallel> dp;

  // The same weights and gradients for the same seed.
  explicit Rank(uint64_t seed) {
    model.init_random(seed);
    dp = std::make_unique<DataParallel>(model, comm, std::span<const float>{},
                                        std::span<const float>{});
    const int B = 2, T = 16;
    std::mt19937 rng(uint32_t(seed) + 1);
    std::vector<int32_t> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; ++i) in[i] = int32_t(rng() % 97), tg[i] = int32_t(rng() % 97);
    dp->begin_step();
    dp->micro_step(in.data(), tg.data(), B, T, 1.0, true);
  }
};

TEST(DataParallel, TensorSumSquaresMatchLongDoubleReference) {
  Rank s(21);
  const std::vector<double> got = s.dp->tensor_sum_squares();
  const std::vector<float> g = s.model.gradients();  // one micro-batch: the summed gradient
  const auto& tensors = s.model.layout().tensors;
  ASSERT_EQ(got.size(), tensors.size());
  long double all = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    long double ref = 0;
    for (size_t k = 0; k < tensors[i].numel; ++k)
      ref += (long double)g[tensors[i].offset + k] * g[tensors[i].offset + k];
    all += ref;
    EXPECT_NEAR(got[i], double(ref), 1e-12 * double(ref) + 1e-300) << tensors[i].name;
  }
  EXPECT_GT(double(all), 0.0);
  const double norm = s.dp->grad_norm();
  EXPECT_NEAR(norm * norm, double(all), 1e-12 * double(all));
}

TEST(DataParallel, PerTensorScalesActTensorByTensor) {
  AdamWSettings a;
  a.lr = 1e-2, a.weight_decay = 0.1, a.step = 1;
  const size_t n_tensors = make_param_layout(tiny_config()).tensors.size();

  // Equal scales are the global scale, bit for bit.
  Rank global(5), scaled(5), unscaled(5), mixed(5);
  AdamWSettings half = a;
  half.grad_scale = 0.5;
  global.dp->adamw_step(half);
  scaled.dp->adamw_step(a, std::vector<double>(n_tensors, 0.5));
  EXPECT_TRUE(global.dp->parameters() == scaled.dp->parameters());

  // One tensor scaled: its elements move as under the scale, the rest as without.
  unscaled.dp->adamw_step(a);
  std::vector<double> one(n_tensors, 1.0);
  const int fc = mixed.model.layout().layers[1].fc_w;
  one[fc] = 0.5;
  mixed.dp->adamw_step(a, one);
  const std::vector<float> pg = global.dp->parameters(), pu = unscaled.dp->parameters(),
                           pm = mixed.dp->parameters();
  const ParamInfo& t = mixed.model.layout()[fc];
  size_t differ = 0;
  for (size_t k = 0; k < pm.size(); ++k) {
    const bool inside = k >= t.offset && k < t.offset + t.numel;
    ASSERT_EQ(pm[k], inside ? pg[k] : pu[k]) << "element " << k;
    differ += inside && pg[k] != pu[k];
  }
  EXPECT_GT(differ, t.numel / 2);  // the scale mattered (with weight decay, Adam is not scale-free)
}

}  // namespace test_data_parallel
}  // namespace
}  // namespace lsgpt
