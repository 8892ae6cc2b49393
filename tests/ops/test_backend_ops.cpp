// Op parity across backends, in the spirit of ggml's test-backend-ops: every
// op of the Backend interface runs through make_backend() on the backend
// under test ("cpu" always, "cuda" when one is built and a GPU is present)
// and on the "cpu64" reference, on the same fresh random inputs, and each
// output is compared by normalised error ||a - b|| / ||b||.
//
// The reference sees exactly the inputs the backend under test saw: inputs
// are uploaded to the backend under test first, downloaded back (so bf16
// rounding is applied once) and those values feed cpu64. The error measured is
// therefore the op's own, not the input quantisation.
//
// Every output buffer is poisoned with NaN before the op runs, so an element
// the op forgets to write fails the comparison; accumulating outputs (+=)
// start from random values, so writing instead of accumulating fails too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "ops/backend.h"
#include "support/numeric.h"

namespace lsgpt {
namespace {
namespace test_backend_ops {

using testing::random_vector;
using testing::relative_error;

// Tolerances on ||a-b||/||b||, by the element type the backend under test
// stores the tensor in. f32: unit roundoff 6e-8, and the ops here sum at most
// a few hundred terms, some with cancellation (LayerNorm and softmax
// gradients), which leaves errors of ~1e-6; 1e-5 keeps a 10x margin while a
// real bug (a wrong index, a missing term) gives errors of 1e-2 or more.
// bf16: 8 mantissa bits, unit roundoff 2^-9 = 2e-3, so rounding the output
// alone gives ~2e-3 and bf16 intermediates (pre-GELU, attention
// probabilities) can double it; 1e-2 is the usual bound for bf16 kernels.
double tolerance(DType t) {
  switch (t) {
    case DType::f64:
      return 1e-12;
    case DType::f32:
      return 1e-5;
    case DType::bf16:
      return 1e-2;
    default:
      return 0;
  }
}

// Where a tensor lives: the backend's working type, its accumulation type,
// or int32 (token ids and targets).
enum class Elem { work, acc, i32 };
// in: uploaded, not compared. out: poisoned, compared. inout: uploaded
// (random, for += outputs), compared. scratch: uploaded or poisoned, never
// compared (buffers the op may clobber, or caches with unwritten slots).
enum class Role { in, out, inout, scratch_in, scratch_out };

struct Arg {
  std::string name;
  Elem elem;
  Role role;
  size_t n;
  std::vector<float> values;  // in, inout, scratch_in
  std::vector<int32_t> ints;  // i32
  // Compare in the tolerance of the tensor's own type instead of the
  // backend's working type: for state kept in fp32 by design (AdamW moments
  // and master weights, LayerNorm statistics, losses), where rounding it to
  // bf16 would be a bug the looser tolerance could not see.
  bool own_precision = false;
};

using Tensors = std::map<std::string, std::vector<float>>;
using Pointers = std::map<std::string, void*>;
using OpFn = std::function<void(Backend&, Pointers&)>;

struct Outcome {
  Tensors seen;    // the inputs as the backend stored them
  Tensors result;  // every tensor after the op
};

uint64_t seed_of(const std::string& name, uint64_t salt) {
  return std::hash<std::string>{}(name) ^ (salt * 0x9E3779B97F4A7C15ull);
}

Arg input(const std::string& name, Elem elem, size_t n, uint64_t salt, double lo = -1,
          double hi = 1) {
  return Arg{name, elem, Role::in, n, random_vector<float>(n, seed_of(name, salt), lo, hi), {}};
}
Arg inout(const std::string& name, Elem elem, size_t n, uint64_t salt, double lo = -1,
          double hi = 1) {
  Arg a = input(name, elem, n, salt, lo, hi);
  a.role = Role::inout;
  return a;
}
Arg output(const std::string& name, Elem elem, size_t n) {
  return Arg{name, elem, Role::out, n, {}, {}};
}
Arg ints(const std::string& name, std::vector<int32_t> values) {
  const size_t n = values.size();
  return Arg{name, Elem::i32, Role::in, n, {}, std::move(values)};
}

DType type_of(const Backend& be, Elem e) {
  return e == Elem::work ? be.dtype() : e == Elem::acc ? be.acc_dtype() : DType::i32;
}

Outcome execute(Backend& be, const std::vector<Arg>& args, const OpFn& op) {
  std::map<std::string, DeviceBuffer> buffers;
  Pointers ptrs;
  Outcome outcome;
  for (const Arg& a : args) {
    const DType t = type_of(be, a.elem);
    DeviceBuffer buf(be, a.n * dtype_size(t));
    if (a.n == 0) {
      // an absent optional tensor (kbar without the span cross basis)
    } else if (a.elem == Elem::i32) {
      be.upload(buf.get(), a.ints.data(), a.n * sizeof(int32_t));
    } else if (a.role == Role::out || a.role == Role::scratch_out) {
      const std::vector<float> poison(a.n, std::numeric_limits<float>::quiet_NaN());
      be.upload_f32(buf.get(), t, poison.data(), a.n);
    } else {
      EXPECT_EQ(a.values.size(), a.n) << a.name;
      be.upload_f32(buf.get(), t, a.values.data(), a.n);
      std::vector<float> seen(a.n);
      be.download_f32(seen.data(), buf.get(), t, a.n);
      outcome.seen[a.name] = std::move(seen);
    }
    ptrs[a.name] = buf.get();
    buffers.emplace(a.name, std::move(buf));
  }
  op(be, ptrs);
  be.sync();
  for (const Arg& a : args) {
    if (a.elem == Elem::i32 || a.n == 0) continue;
    std::vector<float> got(a.n);
    be.download_f32(got.data(), ptrs[a.name], type_of(be, a.elem), a.n);
    outcome.result[a.name] = std::move(got);
  }
  return outcome;
}

class BackendOpsTest : public ::testing::TestWithParam<std::string> {
 public:
  void SetUp() override {
    reference_ = make_backend("cpu64");
    try {
      backend_ = make_backend(GetParam());
    } catch (const Error& e) {
      GTEST_SKIP() << "no " << GetParam() << " backend: " << e.what();
    }
  }

  double tol(const Arg& a) const {
    return tolerance(a.own_precision ? type_of(*backend_, a.elem) : backend_->dtype());
  }

  // AdamW's comparison (args[0] is "param", args[1] "master"): the reference
  // starts from what the backend under test held. With master weights the
  // update starts from the master values, not their bf16 rounding, so the
  // reference's param starts from what the master held, and the master is
  // compared with the reference's param. Returns {under test, reference}.
  std::pair<Outcome, Outcome> check_adamw(std::vector<Arg> args, const OpFn& op) {
    const bool with_master = backend_->dtype() != backend_->acc_dtype();
    Outcome got = execute(*backend_, args, op);
    for (Arg& a : args) a.values = got.seen[a.name];
    if (with_master) args[0].values = got.seen["master"];
    Outcome ref = execute(*reference_, args, op);
    const double acc_tol = tolerance(backend_->acc_dtype());
    EXPECT_LE(relative_error(got.result["param"], ref.result["param"]),
              tolerance(backend_->dtype()));
    EXPECT_LE(relative_error(got.result["m"], ref.result["m"]), acc_tol);
    EXPECT_LE(relative_error(got.result["v"], ref.result["v"]), acc_tol);
    if (with_master) {
      EXPECT_LE(relative_error(got.result["master"], ref.result["param"]), acc_tol);
    }
    return {got, ref};
  }

  // Runs op on the backend under test and on cpu64 (on the inputs as the
  // backend under test stored them) and compares every out/inout tensor.
  // Returns {under test, reference} for extra checks.
  std::pair<Outcome, Outcome> check(const std::string& what, std::vector<Arg> args,
                                    const OpFn& op) {
    Outcome got = execute(*backend_, args, op);
    for (Arg& a : args)
      if (got.seen.count(a.name)) a.values = got.seen[a.name];
    Outcome ref = execute(*reference_, args, op);
    for (const Arg& a : args) {
      if (a.role != Role::out && a.role != Role::inout) continue;
      const double err = relative_error(got.result[a.name], ref.result[a.name]);
      EXPECT_LE(err, tol(a)) << what << ": " << a.name << " on " << backend_->name()
                             << " differs from cpu64 by " << err;
    }
    return {std::move(got), std::move(ref)};
  }

 protected:
  std::unique_ptr<Backend> reference_, backend_;
};

// ---------------------------------------------------------------- embedding

TEST_P(BackendOpsTest, EmbeddingForward) {
  const int B = 3, T = 7, C = 40, V = 11, max_T = 12, pos0 = 4;
  std::mt19937 rng(1);
  std::vector<int32_t> tokens(size_t(B) * T);
  for (auto& t : tokens) t = int32_t(rng() % V);
  check("embedding_forward",
        {ints("tokens", tokens), input("wte", Elem::work, size_t(V) * C, 1),
         input("wpe", Elem::work, size_t(max_T) * C, 1),
         output("out", Elem::work, size_t(B) * T * C)},
        [&](Backend& be, Pointers& p) {
          be.embedding_forward(p["out"], static_cast<const int32_t*>(p["tokens"]), p["wte"],
                               p["wpe"], B, T, C, pos0);
        });
}

TEST_P(BackendOpsTest, EmbeddingBackward) {
  // Fewer token ids than positions: the scatter sees many repeats.
  const int B = 4, T = 9, C = 72, V = 6;
  std::mt19937 rng(2);
  std::vector<int32_t> tokens(size_t(B) * T);
  for (auto& t : tokens) t = int32_t(rng() % V);
  check("embedding_backward",
        {ints("tokens", tokens), input("dout", Elem::work, size_t(B) * T * C, 2),
         inout("dwte", Elem::work, size_t(V) * C, 2), inout("dwpe", Elem::work, size_t(T) * C, 2)},
        [&](Backend& be, Pointers& p) {
          be.embedding_backward(p["dwte"], p["dwpe"], p["dout"],
                                static_cast<const int32_t*>(p["tokens"]), B, T, C);
        });
}

// ---------------------------------------------------------------- layernorm

// Forward then backward; with colsum the backward also sums dinp's columns
// into dinp_colsum (random, so writing instead of adding fails), without it
// passes null there.
void check_layernorm(BackendOpsTest& t, int N, int C, bool colsum, uint64_t salt) {
  Arg inp = input("inp", Elem::work, size_t(N) * C, salt);
  for (auto& x : inp.values) x += 2.0f;  // a row mean far from zero
  Arg mean = output("mean", Elem::acc, N), rstd = output("rstd", Elem::acc, N);
  mean.own_precision = rstd.own_precision = true;
  std::vector<Arg> args{inp,
                        input("weight", Elem::work, C, salt, 0.5, 1.5),
                        input("bias", Elem::work, C, salt),
                        input("dout", Elem::work, size_t(N) * C, salt),
                        output("out", Elem::work, size_t(N) * C),
                        mean,
                        rstd,
                        inout("dinp", Elem::work, size_t(N) * C, salt),
                        inout("dweight", Elem::work, C, salt),
                        inout("dbias", Elem::work, C, salt)};
  if (colsum) args.push_back(inout("dinp_colsum", Elem::work, C, salt));
  const std::string what = "layernorm N " + std::to_string(N) + " C " + std::to_string(C) +
                           (colsum ? " +dinp_colsum" : "");
  t.check(what, args, [&](Backend& be, Pointers& p) {
    be.layernorm_forward(p["out"], p["mean"], p["rstd"], p["inp"], p["weight"], p["bias"], N, C);
    be.layernorm_backward(p["dinp"], p["dweight"], p["dbias"], colsum ? p["dinp_colsum"] : nullptr,
                          p["dout"], p["inp"], p["weight"], p["mean"], p["rstd"], N, C);
  });
}

// On CUDA, C = 96 takes the fused backward (one 16-byte piece a lane), 100
// the scalar kernels (C % 8 != 0) and 1032 the vectorised two-kernel path
// (five pieces a lane, more than the fused kernel takes); dinp's column sums
// come from the fused kernel in the first, from a column-sum pass otherwise.
TEST_P(BackendOpsTest, LayerNormForwardAndBackward) {
  check_layernorm(*this, 10, 96, false, 3);
  check_layernorm(*this, 10, 96, true, 13);
  check_layernorm(*this, 37, 96, true, 23);  // two 32-row parts, the last short
  check_layernorm(*this, 37, 100, true, 33);
  check_layernorm(*this, 9, 1032, true, 43);
}

// ---------------------------------------------------------------- matmul

// Forward then backward, so the backward sees a pre_gelu the backend made.
void check_matmul(BackendOpsTest& t, bool bias, bool gelu) {
  const int N = 24, C = 48, OC = 40;
  Arg dout = input("dout", Elem::work, size_t(N) * OC, 4);
  dout.role = Role::scratch_in;  // the fused-GELU backward may clobber it
  Arg pre_gelu = output("pre_gelu", Elem::work, size_t(N) * OC);
  if (!gelu) pre_gelu.role = Role::scratch_out;
  const std::string what = std::string("matmul") + (bias ? " +bias" : "") + (gelu ? " +gelu" : "");
  t.check(what,
          {input("inp", Elem::work, size_t(N) * C, 4),
           input("weight", Elem::work, size_t(OC) * C, 4, -0.3, 0.3),
           input("bias", Elem::work, OC, 4), output("out", Elem::work, size_t(N) * OC), pre_gelu,
           dout, output("dinp", Elem::work, size_t(N) * C),
           inout("dweight", Elem::work, size_t(OC) * C, 4), inout("dbias", Elem::work, OC, 4)},
          [&](Backend& be, Pointers& p) {
            void* pre = gelu ? p["pre_gelu"] : nullptr;
            be.matmul_forward(p["out"], pre, p["inp"], p["weight"], bias ? p["bias"] : nullptr, N,
                              C, OC);
            be.matmul_backward(p["dinp"], p["dweight"], bias ? p["dbias"] : nullptr, p["dout"],
                               p["inp"], p["weight"], pre, nullptr, N, C, OC);
          });
}

TEST_P(BackendOpsTest, Matmul) {
  check_matmul(*this, false, false);
  check_matmul(*this, true, false);
}

TEST_P(BackendOpsTest, MatmulFusedGelu) {
  check_matmul(*this, true, true);
  check_matmul(*this, false, true);
}

// The MLP's second product: its input is gelu(pre) and its backward returns
// the gradient of pre (cuBLASLt's DGELU epilogue on CUDA).
TEST_P(BackendOpsTest, MatmulBackwardThroughInputGelu) {
  const int N = 24, C = 48, OC = 40;
  check("matmul backward through the input's gelu",
        {input("pre", Elem::work, size_t(N) * C, 5, -3, 3),
         output("inp", Elem::work, size_t(N) * C),
         input("weight", Elem::work, size_t(OC) * C, 5, -0.3, 0.3),
         input("dout", Elem::work, size_t(N) * OC, 5), output("dinp", Elem::work, size_t(N) * C),
         inout("dweight", Elem::work, size_t(OC) * C, 5), inout("dbias", Elem::work, OC, 5)},
        [&](Backend& be, Pointers& p) {
          be.gelu_forward(p["inp"], p["pre"], size_t(N) * C);
          be.matmul_backward(p["dinp"], p["dweight"], p["dbias"], p["dout"], p["inp"],
                             p["weight"], nullptr, p["pre"], N, C, OC);
        });
}

// ---------------------------------------------------------------- elementwise

TEST_P(BackendOpsTest, Gelu) {
  const size_t n = 3001;
  check("gelu",
        {input("inp", Elem::work, n, 5, -5, 5), input("dout", Elem::work, n, 5),
         output("out", Elem::work, n), output("dinp", Elem::work, n)},
        [&](Backend& be, Pointers& p) {
          be.gelu_forward(p["out"], p["inp"], n);
          be.gelu_backward(p["dinp"], p["inp"], p["dout"], n);
        });
  // In place: dinp aliases dout.
  Arg d = inout("d", Elem::work, n, 6);
  check("gelu_backward in place", {input("inp", Elem::work, n, 6, -5, 5), d},
        [&](Backend& be, Pointers& p) { be.gelu_backward(p["d"], p["inp"], p["d"], n); });
}

TEST_P(BackendOpsTest, ResidualAndAddInplace) {
  const size_t n = 4097;
  check("residual",
        {input("a", Elem::work, n, 7), input("b", Elem::work, n, 7), output("out", Elem::work, n),
         inout("acc", Elem::work, n, 7)},
        [&](Backend& be, Pointers& p) {
          be.residual_forward(p["out"], p["a"], p["b"], n);
          be.add_inplace(p["acc"], p["a"], n);
        });
}

// ---------------------------------------------------------------- classifier

TEST_P(BackendOpsTest, SoftmaxCrossEntropy) {
  // V not a multiple of anything, padded to a multiple of 64, as the model does.
  const int N = 9, V = 1001, Vp = 1024;
  std::mt19937 rng(8);
  std::vector<int32_t> targets(N);
  for (auto& t : targets) t = int32_t(rng() % V);
  targets[3] = -1;
  targets[7] = V - 1;
  Arg logits = inout("logits", Elem::work, size_t(N) * Vp, 8, -4, 4);
  // Huge padding logits: reading a padded column changes every result.
  for (int n = 0; n < N; ++n)
    for (int v = V; v < Vp; ++v) logits.values[size_t(n) * Vp + v] = 1e4f;
  Arg losses = output("losses", Elem::acc, N);
  losses.own_precision = true;
  for (bool grad : {false, true}) {
    auto [got, ref] =
        check(grad ? "classifier +grad" : "classifier", {ints("targets", targets), logits, losses},
              [&](Backend& be, Pointers& p) {
                be.softmax_cross_entropy(p["losses"], p["logits"],
                                         static_cast<const int32_t*>(p["targets"]), N, V, Vp,
                                         1.0 / 16, grad, 0.0, nullptr);
              });
    if (!grad) {
      EXPECT_EQ(got.result["logits"], got.seen["logits"]) << "forward only wrote logits";
    }
    EXPECT_EQ(got.result["losses"][3], 0.0f);
    if (grad) {
      for (int v = 0; v < Vp; ++v) ASSERT_EQ(got.result["logits"][3 * size_t(Vp) + v], 0.0f);
      for (int v = V; v < Vp; ++v) ASSERT_EQ(got.result["logits"][size_t(Vp) + v], 0.0f);
    }
  }
}

// z-loss fused into the classifier: the gradient gains 2 coef log Z * softmax
// and log Z is written per row. A large coefficient so the term is not lost
// in the tolerance.
TEST_P(BackendOpsTest, SoftmaxCrossEntropyZLoss) {
  const int N = 7, V = 333, Vp = 384;
  std::mt19937 rng(18);
  std::vector<int32_t> targets(N);
  for (auto& t : targets) t = int32_t(rng() % V);
  targets[2] = -1;
  Arg logits = inout("logits", Elem::work, size_t(N) * Vp, 18, -3, 5);
  Arg losses = output("losses", Elem::acc, N), lse = output("lse", Elem::acc, N);
  losses.own_precision = lse.own_precision = true;
  auto [got, ref] = check("classifier +z-loss", {ints("targets", targets), logits, losses, lse},
                          [&](Backend& be, Pointers& p) {
                            be.softmax_cross_entropy(p["losses"], p["logits"],
                                                     static_cast<const int32_t*>(p["targets"]),
                                                     N, V, Vp, 1.0 / 8, true, 0.05, p["lse"]);
                          });
  EXPECT_EQ(got.result["lse"][2], 0.0f) << "an ignored row's log Z is 0";
  for (int v = 0; v < Vp; ++v) ASSERT_EQ(got.result["logits"][2 * size_t(Vp) + v], 0.0f);
}

// ---------------------------------------------------------------- QK-norm

// Forward then backward (into a separate dqkv, and in place over dout), with
// head_dim 40 (not a multiple of the warp) and 64.
void check_qk_norm(BackendOpsTest& t, int N, int n_head, int D, bool in_place) {
  const size_t C = size_t(n_head) * D;
  Arg rstd = output("rstd", Elem::acc, size_t(N) * 2 * n_head);
  rstd.own_precision = true;
  Arg dqkv = in_place ? inout("dqkv", Elem::work, size_t(N) * 3 * C, 20)
                      : output("dqkv", Elem::work, size_t(N) * 3 * C);
  t.check(std::string("qk_norm") + (in_place ? " in place" : ""),
          {input("qkv", Elem::work, size_t(N) * 3 * C, 20, -2, 2),
           input("q_gain", Elem::work, D, 20, 0.5, 1.5), input("k_gain", Elem::work, D, 21, 0.5, 1.5),
           input("dout", Elem::work, size_t(N) * 3 * C, 20), output("out", Elem::work, size_t(N) * 3 * C),
           rstd, dqkv, inout("dq_gain", Elem::work, D, 22), inout("dk_gain", Elem::work, D, 23)},
          [&](Backend& be, Pointers& p) {
            be.qk_norm_forward(p["out"], p["rstd"], p["qkv"], p["q_gain"], p["k_gain"], N, n_head,
                               D, 1e-6);
            const void* dout = in_place ? p["dqkv"] : p["dout"];
            be.qk_norm_backward(p["dqkv"], p["dq_gain"], p["dk_gain"], dout, p["qkv"],
                                p["q_gain"], p["k_gain"], p["rstd"], N, n_head, D);
          });
}

TEST_P(BackendOpsTest, QkNorm) {
  check_qk_norm(*this, 11, 3, 40, false);
  check_qk_norm(*this, 300, 2, 64, true);  // more rows than one part of the gain sums
}

// In place (the decode path): out aliases qkv and equals the separate result.
TEST_P(BackendOpsTest, QkNormForwardInPlace) {
  const int N = 5, n_head = 2, D = 48;
  const size_t n = size_t(N) * 3 * n_head * D;
  Arg x = inout("x", Elem::work, n, 24, -2, 2);
  check("qk_norm_forward in place",
        {x, input("q_gain", Elem::work, D, 24, 0.5, 1.5), input("k_gain", Elem::work, D, 25, 0.5, 1.5)},
        [&](Backend& be, Pointers& p) {
          be.qk_norm_forward(p["x"], nullptr, p["x"], p["q_gain"], p["k_gain"], N, n_head, D, 1e-6);
        });
}

// ---------------------------------------------------------------- optimizer

TEST_P(BackendOpsTest, SumSquares) {
  const size_t n = 70001;
  const auto x = random_vector<float>(n, 9, -2, 2);
  auto sum = [&](Backend& be, std::vector<float>* seen) {
    DeviceBuffer buf(be, n * dtype_size(be.dtype()));
    be.upload_f32(buf.get(), be.dtype(), x.data(), n);
    if (seen) be.download_f32(seen->data(), buf.get(), be.dtype(), n);
    return be.sum_squares(buf.get(), n);
  };
  std::vector<float> seen(n);
  const double got = sum(*backend_, &seen);
  DeviceBuffer ref_buf(*reference_, n * sizeof(double));
  reference_->upload_f32(ref_buf.get(), DType::f64, seen.data(), n);
  const double ref = reference_->sum_squares(ref_buf.get(), n);
  // The interface promises a double-precision sum of the stored values.
  EXPECT_NEAR(got, ref, 1e-10 * ref);
}

TEST_P(BackendOpsTest, AdamW) {
  const size_t n = 5003;
  const bool with_master = backend_->dtype() != backend_->acc_dtype();
  Arg param = inout("param", Elem::work, n, 10);
  Arg master = param;  // the fp32 copy a bf16 backend updates
  master.name = "master";
  master.elem = Elem::acc;
  Arg m = inout("m", Elem::acc, n, 10), v = inout("v", Elem::acc, n, 10, 0.0, 0.01);
  m.own_precision = v.own_precision = master.own_precision = true;
  if (!with_master) master.role = Role::scratch_in;
  std::vector<Arg> args = {param,
                           master,
                           m,
                           v,
                           input("grad1", Elem::work, n, 10),
                           input("grad2", Elem::work, n, 11, -3, 3)};
  auto op = [&](Backend& be, Pointers& p) {
    const bool use_master = be.dtype() != be.acc_dtype();
    AdamWSettings s;
    s.lr = 3e-3, s.weight_decay = 0.1, s.beta1 = 0.9, s.beta2 = 0.95, s.eps = 1e-8;
    s.step = 7, s.grad_scale = 0.8;
    be.adamw_update(p["param"], use_master ? p["master"] : nullptr, p["grad1"], p["m"], p["v"], n,
                    s);
    s.step = 8, s.lr = 2e-3, s.grad_scale = 1.0;
    be.adamw_update(p["param"], use_master ? p["master"] : nullptr, p["grad2"], p["m"], p["v"], n,
                    s);
  };
  auto [got, ref] = check_adamw(args, op);
  // Not vacuous: the parameters moved by much more than the tolerance.
  EXPECT_GT(relative_error(ref.result["param"], got.seen["param"]), 1e-3);
}

// The training step's multi-tensor form: segments with their own weight decay
// and gradient scale, one starting at an odd element, with gaps between them
// that must stay as they were (the reference leaves them too).
TEST_P(BackendOpsTest, AdamWSegments) {
  const size_t n = 9001;
  const bool with_master = backend_->dtype() != backend_->acc_dtype();
  Arg param = inout("param", Elem::work, n, 20);
  Arg master = param;
  master.name = "master";
  master.elem = Elem::acc;
  Arg m = inout("m", Elem::acc, n, 21), v = inout("v", Elem::acc, n, 22, 0.0, 0.01);
  m.own_precision = v.own_precision = master.own_precision = true;
  if (!with_master) master.role = Role::scratch_in;
  std::vector<Arg> args = {param, master, m, v, input("grad", Elem::work, n, 23, -2, 2)};
  const std::vector<AdamWSegment> segments = {
      {0, 4096, 0.1, 0.6}, {4096, 4099, 0.0, 0.9}, {4103, 4871, 0.0, 0.25}, {4871, 9000, 0.1, 1.0}};
  auto op = [&](Backend& be, Pointers& p) {
    const bool use_master = be.dtype() != be.acc_dtype();
    AdamWSettings s;
    s.lr = 3e-3, s.beta1 = 0.9, s.beta2 = 0.95, s.eps = 1e-8, s.step = 3;
    s.weight_decay = 5.0, s.grad_scale = 7.0;  // replaced by each segment's own
    be.adamw_update_segments(p["param"], use_master ? p["master"] : nullptr, p["grad"], p["m"],
                             p["v"], segments.data(), segments.size(), s);
  };
  auto [got, ref] = check_adamw(args, op);
  // Outside the segments nothing moved; inside, the parameters did.
  for (size_t i : {size_t(4099), size_t(4102), size_t(9000)})
    EXPECT_EQ(got.result["m"][i], got.seen["m"][i]) << i;
  EXPECT_GT(relative_error(ref.result["param"], got.seen["param"]), 1e-3);
}

// ---------------------------------------------------------------- attention

struct AttentionCase {
  std::string name;
  int n_local, window;
  SpanLayer span;
};

std::vector<AttentionCase> attention_cases() {
  SpanLayer cross, self;
  cross.q = {true, SpanBasis::cross, 1.5, 0.7};
  cross.k = {true, SpanBasis::cross, 0.5, 1.3};
  self.q = {true, SpanBasis::self, 2.0, 0.8};
  self.k = {true, SpanBasis::self, 0.6, 1.1};
  self.v = {true, SpanBasis::self, 1.7, 0.9};
  return {
      {"MHSA", 0, 1, {}},
      {"LS mixed", 3, 4, {}},
      {"all local", 4, 3, {}},
      {"window 1", 2, 1, {}},
      {"window >= T", 3, 40, {}},
      {"span cross q,k", 3, 4, cross},
      {"span self q,k,v", 2, 5, self},
      {"MHSA span cross q,k", 0, 1, cross},
  };
}

// Two shapes: T 13, D 8 (one 16-row part a batch row for the CUDA kernel's
// qkv bias sums) and T 37, D 24 (three parts, the last partly past T, and
// columns past the real head dim in the padded tile).
TEST_P(BackendOpsTest, AttentionForwardBackward) {
  struct Shape {
    int T, n_head, head_dim;
  };
  for (const Shape& shape : {Shape{13, 4, 8}, Shape{37, 3, 24}}) {
    for (const AttentionCase& c : attention_cases()) {
      AttentionSpec spec;
      spec.B = 2, spec.T = shape.T, spec.n_head = shape.n_head, spec.head_dim = shape.head_dim;
      spec.n_local = std::min(c.n_local, shape.n_head);
      spec.window = c.window, spec.span = c.span;
      const int B = spec.B, T = spec.T, H = spec.n_head, C = spec.C();
      const bool kbar = spec.span.needs_kbar();
      std::vector<Arg> args = {input("qkv", Elem::work, size_t(B) * T * 3 * C, 12, -2, 2),
                               input("dout", Elem::work, size_t(B) * T * C, 12),
                               output("out", Elem::work, size_t(B) * T * C),
                               output("lse", Elem::acc, size_t(B) * H * T),
                               output("max_logit", Elem::acc, H),
                               output("kbar", Elem::work, kbar ? size_t(B) * T * C : 0),
                               output("dqkv", Elem::work, size_t(B) * T * 3 * C),
                               // random, so a CUDA backend that writes instead of
                               // adding differs from cpu64 (the CPU backends share
                               // that code; ModelGradient checks it by differences)
                               inout("dqkv_colsum", Elem::work, 3 * C, 13)};
      const std::string name = c.name + ", T " + std::to_string(spec.T);
      SCOPED_TRACE(name);
      check("attention " + name, args, [&](Backend& be, Pointers& p) {
        void* kb = kbar ? p["kbar"] : nullptr;
        be.attention_forward(p["out"], p["lse"], p["max_logit"], kb, p["qkv"], spec);
        be.attention_backward(p["dqkv"], p["dqkv_colsum"], p["dout"], p["qkv"], p["out"],
                              p["lse"], kb, spec);
      });
    }
  }
}

// Decoding token by token must reproduce the forward pass row by row (the
// KV cache, including the local heads' ring buffer once it wraps), on every
// backend, and match cpu64's decode.
TEST_P(BackendOpsTest, AttentionDecode) {
  for (const AttentionCase& c : attention_cases()) {
    if (c.span.any()) continue;  // span changes only the backward
    SCOPED_TRACE(c.name);
    DecodeSpec ds;
    ds.B = 2, ds.n_head = 4, ds.head_dim = 8, ds.n_local = c.n_local, ds.window = c.window;
    const int T = 11;
    ds.max_T = T + 3;  // global slots past T stay unwritten (NaN): never read
    const int B = ds.B, H = ds.n_head, D = ds.head_dim, C = ds.C();
    const int n_global = H - ds.n_local, slots = ds.local_slots();
    // qkv in [T, B, 3C]: each decode step reads one contiguous [B, 3C] slice.
    Arg qkv_steps = input("qkv_steps", Elem::work, size_t(T) * B * 3 * C, 13, -2, 2);
    Arg k_local = output("k_local", Elem::work, size_t(B) * ds.n_local * slots * D);
    Arg v_local = output("v_local", Elem::work, k_local.n);
    Arg k_global = output("k_global", Elem::work, size_t(B) * n_global * ds.max_T * D);
    Arg v_global = output("v_global", Elem::work, k_global.n);
    // Caches are working state; slots past the last position stay NaN.
    for (Arg* a : {&k_local, &v_local, &k_global, &v_global}) a->role = Role::scratch_out;
    auto [got, ref] = check(
        "attention_decode " + c.name,
        {qkv_steps, k_local, v_local, k_global, v_global,
         output("out_steps", Elem::work, size_t(T) * B * C)},
        [&](Backend& be, Pointers& p) {
          const size_t es = dtype_size(be.dtype());
          for (int pos = 0; pos < T; ++pos) {
            DecodeSpec step = ds;
            step.pos = pos;
            be.attention_decode(
                static_cast<char*>(p["out_steps"]) + size_t(pos) * B * C * es,
                ds.n_local ? p["k_local"] : nullptr, ds.n_local ? p["v_local"] : nullptr,
                n_global ? p["k_global"] : nullptr, n_global ? p["v_global"] : nullptr,
                static_cast<const char*>(p["qkv_steps"]) + size_t(pos) * B * 3 * C * es, step);
          }
        });

    // The same tokens through attention_forward on the backend under test.
    std::vector<float> qkv_seq(size_t(B) * T * 3 * C);
    const auto& seen = got.seen["qkv_steps"];
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < B; ++b)
        std::memcpy(&qkv_seq[(size_t(b) * T + t) * 3 * C], &seen[(size_t(t) * B + b) * 3 * C],
                    3 * C * sizeof(float));
    AttentionSpec spec;
    spec.B = B, spec.T = T, spec.n_head = H, spec.head_dim = D;
    spec.n_local = ds.n_local, spec.window = ds.window;
    Arg seq = input("qkv", Elem::work, qkv_seq.size(), 0);
    seq.values = qkv_seq;
    Outcome fwd =
        execute(*backend_,
                {seq, output("out", Elem::work, size_t(B) * T * C),
                 output("lse", Elem::acc, size_t(B) * H * T), output("max_logit", Elem::acc, H)},
                [&](Backend& be, Pointers& p) {
                  be.attention_forward(p["out"], p["lse"], p["max_logit"], nullptr, p["qkv"], spec);
                });
    std::vector<float> fwd_steps(size_t(T) * B * C);
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < B; ++b)
        std::memcpy(&fwd_steps[(size_t(t) * B + b) * C],
                    &fwd.result["out"][(size_t(b) * T + t) * C], C * sizeof(float));
    EXPECT_LE(relative_error(got.result["out_steps"], fwd_steps), tolerance(backend_->dtype()))
        << "decode differs from attention_forward on " << backend_->name();
    // The last position alone, where every local ring buffer has wrapped.
    const std::vector<float> last_decode(got.result["out_steps"].end() - size_t(B) * C,
                                         got.result["out_steps"].end());
    const std::vector<float> last_forward(fwd_steps.end() - size_t(B) * C, fwd_steps.end());
    EXPECT_LE(relative_error(last_decode, last_forward), tolerance(backend_->dtype()));
  }
}

INSTANTIATE_TEST_SUITE_P(BackendOps, BackendOpsTest, ::testing::Values("cpu", "cuda"),
                         [](const auto& info) { return info.param; });

}  // namespace test_backend_ops
}  // namespace
}  // namespace lsgpt
