// The CUDA ops at GPT-2-small sizes (C = 768, the padded 50304-entry
// vocabulary), where the vectorised and cuBLASLt-epilogue paths run, against
// cpu64 on the same bf16-exact inputs; and the determinism the trainer's
// bit-identical resume relies on. Small odd shapes are covered by the generic
// parity harness (tests/ops/test_backend_ops.cpp).
//
// Tolerances: bf16 tensors 1e-2 normwise (output rounding alone is ~2e-3);
// f32 state (losses, LayerNorm statistics, AdamW moments and master weights)
// 1e-5. Skips with "no CUDA GPU: ..." where there is none.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../../support/numeric.h"
#include "core/dtype.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "hopper_test_util.h"  // ScopedEnv
#include "ops/backend.h"
#ifdef LSGPT_HAVE_CUDA
#include "ops/cuda/cuda_backend.h"
#endif

namespace lsgpt {
namespace {
namespace test_cuda_ops {

using testing::relative_error;
using namespace cuda_test;

// A named tensor of an op call: its type on the backend (working or
// accumulation), its initial values (none: poisoned output).
struct Tensor {
  bool acc = false;
  std::vector<float> init;
  size_t n = 0;
};
using Tensors = std::map<std::string, Tensor>;
using Results = std::map<std::string, std::vector<float>>;
using Call = std::function<void(Backend&, std::map<std::string, void*>&)>;

Results run(Backend& be, const Tensors& tensors, const std::vector<int32_t>& ints,
            const Call& call) {
  std::map<std::string, Buffer> buffers;
  std::map<std::string, void*> ptrs;
  for (const auto& [name, t] : tensors) {
    const DType type = t.acc ? be.acc_dtype() : be.dtype();
    const size_t n = t.init.empty() ? t.n : t.init.size();
    buffers.emplace(name, make_buffer(be, type, n, t.init.empty() ? nullptr : &t.init));
    ptrs[name] = buffers.at(name).mem.get();
  }
  DeviceBuffer int_buf(be, std::max<size_t>(ints.size(), 1) * sizeof(int32_t));
  if (!ints.empty()) be.upload(int_buf.get(), ints.data(), ints.size() * sizeof(int32_t));
  ptrs["ints"] = int_buf.get();
  call(be, ptrs);
  be.sync();
  Results r;
  for (const auto& [name, b] : buffers) r[name] = fetch(be, b);
  return r;
}

Tensor in(size_t n, uint64_t seed, double lo = -1, double hi = 1) {
  return Tensor{false, bf16_values(n, seed, lo, hi), n};
}
Tensor out(size_t n, bool acc = false) { return Tensor{acc, {}, n}; }

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why_not;
    cuda_ = cuda_backend(why_not);
    if (!cuda_) GTEST_SKIP() << "no CUDA GPU: " << why_not;
    cpu64_ = make_backend("cpu64");
  }
  // Runs on both backends, checks the named outputs, returns the CUDA results.
  Results compare(const Tensors& t, const std::vector<int32_t>& ints, const Call& call,
                  const std::map<std::string, double>& tolerances) {
    Results got = run(*cuda_, t, ints, call);
    Results ref = run(*cpu64_, t, ints, call);
    for (const auto& [name, tol] : tolerances)
      EXPECT_LE(relative_error(got[name], ref[name]), tol) << name;
    // Fixed inputs, same bits: the reductions have a fixed order.
    Results again = run(*cuda_, t, ints, call);
    for (const auto& [name, tol] : tolerances) EXPECT_EQ(got[name], again[name]) << name;
    return got;
  }
  // The classifier's loss and gradient at vocabulary V padded to Vp.
  void check_softmax_cross_entropy(int V, int Vp);
  std::unique_ptr<Backend> cuda_, cpu64_;
};

TEST_F(CudaOps, MatmulGpt2MlpWithFusedGelu) {
  const int N = 256, C = 768, OC = 3072;
  Tensors t{{"inp", in(size_t(N) * C, 1)},          {"weight", in(size_t(OC) * C, 2, -0.05, 0.05)},
            {"bias", in(OC, 3)},                    {"out", out(size_t(N) * OC)},
            {"pre_gelu", out(size_t(N) * OC)},      {"dout", in(size_t(N) * OC, 4)},
            {"dinp", out(size_t(N) * C)},           {"dweight", in(size_t(OC) * C, 5)},
            {"dbias", in(OC, 6)}};
  compare(t, {},
          [&](Backend& be, auto& p) {
            be.matmul_forward(p["out"], p["pre_gelu"], p["inp"], p["weight"], p["bias"], N, C, OC);
            be.matmul_backward(p["dinp"], p["dweight"], p["dbias"], p["dout"], p["inp"],
                               p["weight"], p["pre_gelu"], nullptr, N, C, OC);
          },
          {{"out", kBf16Tolerance},
           {"pre_gelu", kBf16Tolerance},
           {"dinp", kBf16Tolerance},
           {"dweight", kBf16Tolerance},
           {"dbias", kBf16Tolerance}});
}

// GPT-2's fc_proj: input gelu(pre) of width 3072, the backward returning the
// gradient of pre through cuBLASLt's DGELU epilogue.
TEST_F(CudaOps, MatmulGpt2MlpProjectionThroughInputGelu) {
  const int N = 256, C = 3072, OC = 768;
  Tensors t{{"pre", in(size_t(N) * C, 71, -3, 3)}, {"inp", out(size_t(N) * C)},
            {"weight", in(size_t(OC) * C, 72, -0.05, 0.05)}, {"dout", in(size_t(N) * OC, 73)},
            {"dinp", out(size_t(N) * C)},  {"dweight", in(size_t(OC) * C, 74)},
            {"dbias", in(OC, 75)}};
  compare(t, {},
          [&](Backend& be, auto& p) {
            be.gelu_forward(p["inp"], p["pre"], size_t(N) * C);
            be.matmul_backward(p["dinp"], p["dweight"], p["dbias"], p["dout"], p["inp"],
                               p["weight"], nullptr, p["pre"], N, C, OC);
          },
          {{"inp", kBf16Tolerance},
           {"dinp", kBf16Tolerance},
           {"dweight", kBf16Tolerance},
           {"dbias", kBf16Tolerance}});
}

// The bias gradient's column sums over several 256-row parts (the last one
// partial), with 16-byte pieces (OC = 104) and element loads (OC = 100).
TEST_F(CudaOps, MatmulBiasGradientEveryKernelPath) {
  const int N = 600, C = 64;
  for (const int OC : {104, 100}) {
    SCOPED_TRACE("OC = " + std::to_string(OC));
    Tensors t{{"inp", in(size_t(N) * C, 61)}, {"weight", in(size_t(OC) * C, 62, -0.1, 0.1)},
              {"bias", in(OC, 63)},           {"out", out(size_t(N) * OC)},
              {"dout", in(size_t(N) * OC, 64)}, {"dinp", out(size_t(N) * C)},
              {"dweight", in(size_t(OC) * C, 65)}, {"dbias", in(OC, 66)}};
    compare(t, {},
            [&](Backend& be, auto& p) {
              be.matmul_forward(p["out"], nullptr, p["inp"], p["weight"], p["bias"], N, C, OC);
              be.matmul_backward(p["dinp"], p["dweight"], p["dbias"], p["dout"], p["inp"],
                                 p["weight"], nullptr, nullptr, N, C, OC);
            },
            {{"out", kBf16Tolerance},
             {"dinp", kBf16Tolerance},
             {"dweight", kBf16Tolerance},
             {"dbias", kBf16Tolerance}});
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The bias gradient from the weight-gradient product's BGRADB epilogue
// (LSGPT_CUDA_DBIAS=bgradb, matmul.cu) at GPT-2 small's four bias shapes
// (qkv, attention projection, fc through the GELU, fc_proj), accumulated over
// two micro-batches into a random dbias: against cpu64, against the default
// separate column-sum pass, and against itself run again.
TEST_F(CudaOps, MatmulBiasGradientFromTheEpilogue) {
  ScopedEnv epilogue("LSGPT_CUDA_DBIAS", "bgradb");
  const int N = 512;
  struct Shape { int C, OC; bool gelu; };
  for (const Shape& shape : {Shape{768, 2304, false}, Shape{768, 768, false},
                             Shape{768, 3072, true}, Shape{3072, 768, false}}) {
    const int C = shape.C, OC = shape.OC;
    SCOPED_TRACE("C = " + std::to_string(C) + ", OC = " + std::to_string(OC));
    Tensors t{{"inp", in(size_t(N) * C, 91)},
              {"weight", in(size_t(OC) * C, 92, -0.05, 0.05)},
              {"pre", in(size_t(N) * OC, 93, -3, 3)},
              {"dout1", in(size_t(N) * OC, 94)},
              {"dout2", in(size_t(N) * OC, 95)},
              {"dinp", out(size_t(N) * C)},
              {"dweight", in(size_t(OC) * C, 96)},
              {"dbias", in(OC, 97)}};
    const Call call = [&](Backend& be, auto& p) {
      for (const char* dout : {"dout1", "dout2"})
        be.matmul_backward(p["dinp"], p["dweight"], p["dbias"], p[dout], p["inp"], p["weight"],
                           shape.gelu ? p["pre"] : nullptr, nullptr, N, C, OC);
    };
    const std::map<std::string, double> tol{
        {"dinp", kBf16Tolerance}, {"dweight", kBf16Tolerance}, {"dbias", kBf16Tolerance}};
    const Results fused = compare(t, {}, call, tol);
#ifdef LSGPT_HAVE_CUDA
    EXPECT_STRNE(cuda_last_dbias_path(), "column-sum")
        << "cuBLASLt offered no BGRADB algorithm: the bias gradient took the separate pass";
#endif
    const Results again = run(*cuda_, t, {}, call);
    EXPECT_TRUE(same_bits(fused.at("dbias"), again.at("dbias"))) << "dbias not reproducible";
    EXPECT_TRUE(same_bits(fused.at("dweight"), again.at("dweight"))) << "dweight not reproducible";
    Results separate;
    {
      ScopedEnv column_sum("LSGPT_CUDA_DBIAS", nullptr);  // the default
      separate = compare(t, {}, call, tol);
#ifdef LSGPT_HAVE_CUDA
      EXPECT_STREQ(cuda_last_dbias_path(), "column-sum");
#endif
    }
    // The input gradient's product is the same either way.
    EXPECT_TRUE(same_bits(fused.at("dinp"), separate.at("dinp")));
    EXPECT_LE(relative_error(fused.at("dbias"), separate.at("dbias")), kBf16Tolerance);
  }
}

TEST_F(CudaOps, MatmulBiasGradientSwitchRefusesUnknownValues) {
  if (!cuda_) GTEST_SKIP() << "no CUDA GPU";
  ScopedEnv bad("LSGPT_CUDA_DBIAS", "epilogue");
  const int N = 16, C = 32, OC = 48;
  Tensors t{{"inp", in(size_t(N) * C, 81)},       {"weight", in(size_t(OC) * C, 82)},
            {"dout", in(size_t(N) * OC, 83)},     {"dinp", out(size_t(N) * C)},
            {"dweight", in(size_t(OC) * C, 84)}, {"dbias", in(OC, 85)}};
  try {
    run(*cuda_, t, {}, [&](Backend& be, auto& p) {
      be.matmul_backward(p["dinp"], p["dweight"], p["dbias"], p["dout"], p["inp"], p["weight"],
                         nullptr, nullptr, N, C, OC);
    });
    FAIL() << "an unknown LSGPT_CUDA_DBIAS value was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("LSGPT_CUDA_DBIAS must be column-sum or bgradb, got "
                                         "'epilogue'"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(CudaOps, MatmulClassifierShapeWithoutBias) {
  const int N = 64, C = 768, OC = 50304;
  Tensors t{{"inp", in(size_t(N) * C, 11)}, {"weight", in(size_t(OC) * C, 12, -0.05, 0.05)},
            {"out", out(size_t(N) * OC)},   {"dout", in(size_t(N) * OC, 13)},
            {"dinp", out(size_t(N) * C)},   {"dweight", in(size_t(OC) * C, 14)}};
  compare(t, {},
          [&](Backend& be, auto& p) {
            be.matmul_forward(p["out"], nullptr, p["inp"], p["weight"], nullptr, N, C, OC);
            be.matmul_backward(p["dinp"], p["dweight"], nullptr, p["dout"], p["inp"], p["weight"],
                               nullptr, nullptr, N, C, OC);
          },
          {{"out", kBf16Tolerance}, {"dinp", kBf16Tolerance}, {"dweight", kBf16Tolerance}});
}

// A decode step's products: 1..8 rows take matmul_small.cu's kernel (with and
// without bias, with the GELU epilogue, an odd number of output features,
// widths that leave lanes idle); 9 rows go back to cuBLASLt.
TEST_F(CudaOps, MatmulSmallRowCountsEveryEpilogue) {
  for (int N : {1, 2, 3, 5, 8, 9})
    for (auto [C, OC] : {std::pair{768, 2304}, std::pair{3072, 768}, std::pair{72, 1001}}) {
      for (int variant = 0; variant < 3; ++variant) {
        const bool bias = variant != 1, gelu = variant == 2;
        Tensors t{{"inp", in(size_t(N) * C, 20 + N)},
                  {"weight", in(size_t(OC) * C, 30 + C, -0.1, 0.1)},
                  {"bias", in(OC, 40)},
                  {"out", out(size_t(N) * OC)},
                  {"pre_gelu", out(size_t(N) * OC)}};
        std::map<std::string, double> checked{{"out", kBf16Tolerance}};
        if (gelu) checked["pre_gelu"] = kBf16Tolerance;
        SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) +
                     " variant=" + std::to_string(variant));
        compare(t, {},
                [&](Backend& be, auto& p) {
                  be.matmul_forward(p["out"], gelu ? p["pre_gelu"] : nullptr, p["inp"],
                                    p["weight"], bias ? p["bias"] : nullptr, N, C, OC);
                },
                checked);
      }
    }
}

// The decode step's residual add fused with the next LayerNorm: the fused
// kernel (C a multiple of 8) and the two-pass fallback (C = 100).
TEST_F(CudaOps, AddLayerNormFusedAndFallback) {
  for (auto [N, C] : {std::pair{1, 768}, std::pair{5, 1600}, std::pair{3, 100}}) {
    Tensors t{{"residual", in(size_t(N) * C, 50, -2, 2)}, {"delta", in(size_t(N) * C, 51)},
              {"weight", in(C, 52, 0.5, 1.5)},             {"bias", in(C, 53)},
              {"out", out(size_t(N) * C)},                 {"mean", out(N, true)},
              {"rstd", out(N, true)}};
    SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C));
    compare(t, {},
            [&](Backend& be, auto& p) {
              be.add_layernorm_forward(p["residual"], p["out"], p["mean"], p["rstd"], p["delta"],
                                       p["weight"], p["bias"], N, C);
            },
            {{"residual", kBf16Tolerance}, {"out", kBf16Tolerance}, {"mean", kBf16Tolerance},
             {"rstd", kBf16Tolerance}});
  }
}

// GPT-2's padded vocabulary, and a larger one with another padding.
TEST_F(CudaOps, SoftmaxCrossEntropyGpt2Vocabulary) {
  for (auto [V, Vp] : {std::pair{50257, 50304}, std::pair{65537, 65544}}) {
    SCOPED_TRACE("V=" + std::to_string(V) + " Vp=" + std::to_string(Vp));
    check_softmax_cross_entropy(V, Vp);
  }
}

void CudaOps::check_softmax_cross_entropy(int V, int Vp) {
  const int N = 24;
  std::mt19937 rng(7);
  std::vector<int32_t> targets(N);
  for (auto& x : targets) x = int32_t(rng() % V);
  targets[5] = -1;
  targets[6] = V - 1;
  for (bool grad : {false, true}) {
    Tensors t{{"logits", in(size_t(N) * Vp, 21, -6, 6)}, {"losses", out(N, true)}};
    const Call call = [&](Backend& be, auto& p) {
      be.softmax_cross_entropy(p["losses"], p["logits"], static_cast<int32_t*>(p["ints"]), N, V,
                               Vp, 1.0 / N, grad, 0.0, nullptr);
    };
    const Results got =
        compare(t, targets, call, {{"losses", kF32Tolerance}, {"logits", kBf16Tolerance}});
    EXPECT_EQ(got.at("losses")[5], 0.0f);
    if (!grad) continue;
    // The norm above is carried by the target columns; every other entry
    // (softmax / N, about 1e-6 here) must also be right to about a bf16 ulp.
    const Results ref = run(*cpu64_, t, targets, call);
    const std::vector<float>&g = got.at("logits"), &r = ref.at("logits");
    int bad = 0;
    for (size_t i = 0; i < g.size(); ++i)
      bad += std::abs(double(g[i]) - r[i]) > std::abs(double(r[i])) / 128 + 1e-12;
    EXPECT_EQ(bad, 0) << "gradient entries off by more than 2^-7 relative";
    for (int v = 0; v < Vp; ++v) ASSERT_EQ(g[5 * size_t(Vp) + v], 0.0f) << "ignored row";
    for (int v = V; v < Vp; ++v) ASSERT_EQ(g[size_t(v)], 0.0f) << "padded column " << v;
  }
}

// A non-finite logit makes its row's loss non-finite (the trainer stops on
// it) and leaves the other rows alone: the running max skips NaN, the sum
// must not, also where whole threads and warps saw only NaN (row 4: every
// entry of the first warp's 8-entry pieces, the target's entry finite).
TEST_F(CudaOps, SoftmaxCrossEntropyNonFiniteLogitsReachTheLoss) {
  const int N = 5, V = 50257, Vp = 50304;
  Tensor logits = in(size_t(N) * Vp, 24, -6, 6);
  logits.init[0 * size_t(Vp) + 17] = NAN;
  logits.init[1 * size_t(Vp) + 9000] = INFINITY;
  for (int v = 0; v < Vp; ++v) logits.init[2 * size_t(Vp) + v] = NAN;
  for (int v = 0; v < Vp; ++v)
    if (v / 8 % 512 < 32) logits.init[4 * size_t(Vp) + v] = NAN;
  Tensors t{{"logits", logits}, {"losses", out(N, true)}};
  const Results got = run(*cuda_, t, {5, 6, 7, 8, 300}, [&](Backend& be, auto& p) {
    be.softmax_cross_entropy(p["losses"], p["logits"], static_cast<int32_t*>(p["ints"]), N, V,
                             Vp, 1.0 / N, true, 0.0, nullptr);
  });
  const std::vector<float>& loss = got.at("losses");
  EXPECT_FALSE(std::isfinite(loss[0]));
  EXPECT_FALSE(std::isfinite(loss[1]));
  EXPECT_FALSE(std::isfinite(loss[2]));
  EXPECT_TRUE(std::isfinite(loss[3]));
  EXPECT_FALSE(std::isfinite(loss[4]));
}

// z-loss fused into the classifier at GPT-2's padded vocabulary: the
// gradient, the cross-entropy and log Z against cpu64, bit-reproducible.
TEST_F(CudaOps, SoftmaxCrossEntropyZLossGpt2Vocabulary) {
  const int N = 16, V = 50257, Vp = 50304;
  std::mt19937 rng(8);
  std::vector<int32_t> targets(N);
  for (auto& x : targets) x = int32_t(rng() % V);
  targets[3] = -1;
  Tensors t{{"logits", in(size_t(N) * Vp, 22, -6, 6)}, {"losses", out(N, true)},
            {"lse", out(N, true)}};
  const Results got = compare(
      t, targets,
      [&](Backend& be, auto& p) {
        be.softmax_cross_entropy(p["losses"], p["logits"], static_cast<int32_t*>(p["ints"]), N,
                                 V, Vp, 1.0 / N, true, 1e-2, p["lse"]);
      },
      {{"losses", kF32Tolerance}, {"lse", kF32Tolerance}, {"logits", kBf16Tolerance}});
  EXPECT_EQ(got.at("lse")[3], 0.0f);
}

// QK-norm at GPT-2-small's shape (12 heads of 64) over more rows than one
// 256-row part of the gain sums, forward and backward (in place, as the model
// calls it); bit-reproducible.
TEST_F(CudaOps, QkNormGpt2Shape) {
  const int N = 700, H = 12, D = 64;
  const size_t n = size_t(N) * 3 * H * D;
  Tensors t{{"qkv", in(n, 60, -3, 3)},
            {"q_gain", in(D, 61, 0.5, 1.5)},
            {"k_gain", in(D, 62, 0.5, 1.5)},
            {"out", out(n)},
            {"rstd", out(size_t(N) * 2 * H, true)},
            {"dqkv", in(n, 63)},
            {"dq_gain", in(D, 64)},
            {"dk_gain", in(D, 65)}};
  compare(
      t, {},
      [&](Backend& be, auto& p) {
        be.qk_norm_forward(p["out"], p["rstd"], p["qkv"], p["q_gain"], p["k_gain"], N, H, D, 1e-6);
        be.qk_norm_backward(p["dqkv"], p["dq_gain"], p["dk_gain"], p["dqkv"], p["qkv"], p["q_gain"],
                            p["k_gain"], p["rstd"], N, H, D);
      },
      {{"out", kBf16Tolerance},
       {"rstd", kF32Tolerance},
       {"dqkv", kBf16Tolerance},
       {"dq_gain", kBf16Tolerance},
       {"dk_gain", kBf16Tolerance}});
}

// Widths that take each path of the CUDA LayerNorm: 16-byte pieces held in
// registers with whole (768: 3 per lane; 1024: 4) and partial (1600: 7, 200
// pieces) warps, the backward's fused parameter sums up to 4 pieces a lane,
// and the scalar kernels for C % 8 != 0 (100) and C > 2048 (2056). 700 rows:
// the fused backward's last 32-row part is short, and not every warp of a
// part has the same number of rows. Each width runs without and with
// dinp_colsum (the fused kernel's third sums at 768 and 1024, a column-sum
// pass over dinp at the others): null leaves it alone, and asking for it
// changes no bit of dinp, dweight or dbias.
TEST_F(CudaOps, LayerNormEveryKernelPath) {
  const int N = 700;
  for (const int C : {768, 1024, 1600, 100, 2056}) {
    Tensor x = in(size_t(N) * C, 31);
    for (float& v : x.init) v = from_bf16(to_bf16(v * 3 + 1));
    const Tensors t{{"inp", x},
                    {"weight", in(C, 32, 0.5, 1.5)},
                    {"bias", in(C, 33)},
                    {"out", out(size_t(N) * C)},
                    {"mean", out(N, true)},
                    {"rstd", out(N, true)},
                    {"dout", in(size_t(N) * C, 34)},
                    {"dinp", in(size_t(N) * C, 35)},
                    {"dweight", in(C, 36)},
                    {"dbias", in(C, 37)},
                    {"dinp_colsum", in(C, 38)}};
    Results without;
    for (const bool colsum : {false, true}) {
      SCOPED_TRACE("C = " + std::to_string(C) + (colsum ? " with" : " without") +
                   " dinp_colsum");
      const Results got = compare(
          t, {},
          [&](Backend& be, auto& p) {
            be.layernorm_forward(p["out"], p["mean"], p["rstd"], p["inp"], p["weight"],
                                 p["bias"], N, C);
            be.layernorm_backward(p["dinp"], p["dweight"], p["dbias"],
                                  colsum ? p["dinp_colsum"] : nullptr, p["dout"], p["inp"],
                                  p["weight"], p["mean"], p["rstd"], N, C);
          },
          {{"out", kBf16Tolerance},
           {"mean", kF32Tolerance},
           {"rstd", kF32Tolerance},
           {"dinp", kBf16Tolerance},
           {"dweight", kBf16Tolerance},
           {"dbias", kBf16Tolerance},
           {"dinp_colsum", kBf16Tolerance}});
      if (!colsum) {
        EXPECT_EQ(got.at("dinp_colsum"), t.at("dinp_colsum").init);
        without = got;
        continue;
      }
      for (const char* name : {"dinp", "dweight", "dbias"})
        EXPECT_EQ(got.at(name), without.at(name)) << name;
    }
  }
}

TEST_F(CudaOps, EmbeddingGpt2Width) {
  const int B = 4, T = 256, C = 768, V = 2000, max_T = 300, pos0 = 7;
  std::mt19937 rng(41);
  std::vector<int32_t> tokens(size_t(B) * T);
  for (auto& x : tokens) x = int32_t(rng() % 300);  // repeats, as in text
  Tensors t{{"wte", in(size_t(V) * C, 42)},   {"wpe", in(size_t(max_T) * C, 43)},
            {"out", out(size_t(B) * T * C)},  {"dout", in(size_t(B) * T * C, 44)},
            {"dwte", in(size_t(V) * C, 45)},  {"dwpe", in(size_t(max_T) * C, 46)}};
  compare(t, tokens,
          [&](Backend& be, auto& p) {
            const auto* tok = static_cast<const int32_t*>(p["ints"]);
            be.embedding_forward(p["out"], tok, p["wte"], p["wpe"], B, T, C, pos0);
            // dwpe rows [0, T): the backward indexes positions from 0.
            be.embedding_backward(p["dwte"], p["dwpe"], p["dout"], tok, B, T, C);
          },
          {{"out", kBf16Tolerance}, {"dwte", kBf16Tolerance}, {"dwpe", kBf16Tolerance}});
}

TEST_F(CudaOps, AdamWOnMasterWeightsAndSumSquares) {
  const size_t n = (size_t(1) << 20) + 5;
  Tensor master{true, testing::random_vector<float>(n, 51, -1, 1), n};
  Tensor param = master;
  param.acc = false;
  Tensors t{{"param", param},
            {"master", master},
            {"grad", in(n, 52)},
            {"m", Tensor{true, testing::random_vector<float>(n, 53, -0.1, 0.1), n}},
            {"v", Tensor{true, testing::random_vector<float>(n, 54, 0, 0.01), n}}};
  AdamWSettings s;
  s.lr = 1e-3, s.weight_decay = 0.1, s.step = 12, s.grad_scale = 0.5;
  const Results got = run(*cuda_, t, {}, [&](Backend& be, auto& p) {
    be.adamw_update(p["param"], p["master"], p["grad"], p["m"], p["v"], n, s);
  });
  // cpu64 keeps no master copy: it updates param, which starts from the master values.
  Tensors ref_t = t;
  ref_t["param"] = master;
  ref_t.erase("master");
  const Results ref = run(*cpu64_, ref_t, {}, [&](Backend& be, auto& p) {
    be.adamw_update(p["param"], nullptr, p["grad"], p["m"], p["v"], n, s);
  });
  EXPECT_LE(relative_error(got.at("master"), ref.at("param")), kF32Tolerance);
  EXPECT_LE(relative_error(got.at("m"), ref.at("m")), kF32Tolerance);
  EXPECT_LE(relative_error(got.at("v"), ref.at("v")), kF32Tolerance);
  EXPECT_LE(relative_error(got.at("param"), ref.at("param")), kBf16Tolerance);
  for (size_t i = 0; i < n; i += 4099)  // the bf16 copy is the rounded master
    ASSERT_EQ(got.at("param")[i], from_bf16(to_bf16(got.at("master")[i]))) << i;

  const std::vector<float> x = bf16_values(n, 55, -3, 3);
  Buffer xb = make_buffer(*cuda_, DType::bf16, n, &x);
  double expect = 0;
  for (float v : x) expect += double(v) * v;
  const double sum = cuda_->sum_squares(xb.mem.get(), n);
  EXPECT_NEAR(sum, expect, 1e-12 * expect);
  EXPECT_EQ(sum, cuda_->sum_squares(xb.mem.get(), n));
}

}  // namespace test_cuda_ops
}  // namespace
}  // namespace lsgpt
