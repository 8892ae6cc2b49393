// Determinism of `lsgpt train` through the real binary, on each device:
// two identical runs give the same metrics bit for bit, and a run stopped with
// --stop-at and continued with --resume repeats the uninterrupted run bit for
// bit (every logged loss, gradient norm, learning rate and largest attention
// logit, the final validation loss, and the final weights and AdamW moments).
//
// The CUDA case skips without a CUDA GPU. The CUDA backend has no float
// atomics and reduces in fixed orders (docs/DESIGN.md, "Determinism"), so it
// is held to the same exact standard as the CPU; its second run turns
// programmatic dependent launch off (LSGPT_PDL=0), so the two runs also show
// that PDL changes nothing.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "../io/io_test_support.h"
#include "core/error.h"
#include "data/token_file.h"
#include "io/checkpoint.h"
#include "ops/backend.h"

namespace lsgpt {
namespace {
namespace test_determinism_cli {

using json = nlohmann::json;
using testing::quoted;
using testing::run_command;
using testing::ScratchDir;

constexpr int kVocab = 512;
constexpr int kSteps = 6;
constexpr int kStopAt = 3;

// Lines of metrics.jsonl, with the wall-clock fields removed (throughput and
// the time spent in optimizer steps).
std::vector<json> metrics(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<json> records;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line);
    j.erase("tokens_per_s");
    j.erase("train_seconds");
    records.push_back(std::move(j));
  }
  return records;
}

std::vector<json> of_type(const std::vector<json>& records, const std::string& type) {
  std::vector<json> out;
  for (const json& r : records)
    if (r.value("type", "") == type) out.push_back(r);
  return out;
}

// The largest |a - b| over the logged losses, for the failure message.
double max_loss_difference(const std::vector<json>& a, const std::vector<json>& b) {
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (a[i]["loss"].is_number() && b[i]["loss"].is_number())
      worst = std::max(worst, std::abs(a[i]["loss"].get<double>() - b[i]["loss"].get<double>()));
  return worst;
}

std::string describe(const std::vector<json>& records) {
  std::ostringstream os;
  for (const json& r : records) os << r.dump() << "\n";
  return os.str();
}

class TrainDeterminism : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937 rng(7);
    std::vector<int32_t> tokens(6000);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 13 + rng() % 5) % kVocab);
    write_token_file(dir_.file("train.bin"), kVocab, tokens);
    tokens.resize(1500);
    write_token_file(dir_.file("valid.bin"), kVocab, tokens);
  }

  // head_dim 32 (a size the CUDA attention kernels are instantiated for); one
  // local head of two per layer; the second model also takes the span
  // decomposition and gradient accumulation, so their kernels are covered too.
  std::string model_flags(int variant) const {
    std::string flags =
        " --vocab-size 512 --n-layer 2 --n-head 2 --d-model 64 --seq-len 32 --n-local 1"
        " --window 8";
    if (variant == 1) flags += " --span q:cross:1.5:1,k:cross:1.5:1,v:self:1.5:1 --grad-accum 2";
    return flags;
  }

  // A cache of tuned matrix-product algorithms of this test's own (CUDA,
  // docs/CUDA.md "cuBLASLt algorithms by timing"): the first run tunes and
  // stores, the later runs and the resume read what it stored, which is
  // what keeps them bit-identical.
  std::string cache_env() const {
    return "LSGPT_CACHE_DIR=" + quoted(dir_.file("gemm-cache")) + " ";
  }

  testing::CommandResult train(const std::string& device, int variant, const std::string& run,
                               const std::string& extra = "", const std::string& env = "") {
    return run_command(env + cache_env() + quoted(LSGPT_BINARY) + " train --device " + device + " --train " +
                       quoted(dir_.file("train.bin")) + " --valid " +
                       quoted(dir_.file("valid.bin")) + " --out-dir " + quoted(dir_.file(run)) +
                       model_flags(variant) + " --steps " + std::to_string(kSteps) +
                       " --batch-size 4 --warmup 2 --lr 3e-3 --seed 5 --eval-every 2"
                       " --eval-batches 1 --final-eval-batches 2 --quiet" +
                       extra + " < /dev/null");
  }

  void check_device(const std::string& device) {
    for (int variant = 0; variant < 2; ++variant) {
      SCOPED_TRACE(device + " variant " + std::to_string(variant));
      const std::string v = std::to_string(variant);
      auto r = train(device, variant, "a" + v);
      ASSERT_EQ(r.exit_code, 0) << r.output;
      // On CUDA the second run launches every kernel without programmatic
      // dependent launch (src/ops/cuda/launch.cuh), which must change no bit.
      r = train(device, variant, "b" + v, "", device == "cuda" ? "LSGPT_PDL=0 " : "");
      ASSERT_EQ(r.exit_code, 0) << r.output;
      r = train(device, variant, "r" + v, " --stop-at " + std::to_string(kStopAt));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      EXPECT_EQ(load_checkpoint(dir_.file("r" + v + "/checkpoint.ckpt")).step, kStopAt);
      r = run_command(cache_env() + quoted(LSGPT_BINARY) + " train --resume " +
                      quoted(dir_.file("r" + v + "/checkpoint.ckpt")) + " --quiet < /dev/null");
      ASSERT_EQ(r.exit_code, 0) << r.output;

      const std::vector<json> a = metrics(dir_.file("a" + v)), b = metrics(dir_.file("b" + v)),
                              resumed = metrics(dir_.file("r" + v));
      const std::vector<json> train_a = of_type(a, "train");
      ASSERT_EQ(train_a.size(), size_t(kSteps));
      for (const json& rec : train_a) ASSERT_TRUE(rec["loss"].is_number()) << rec.dump();

      // Two identical runs: every record equal, evaluations included.
      EXPECT_EQ(a, b) << "max |loss difference| " << max_loss_difference(train_a, of_type(b, "train"))
                      << "\nfirst run:\n" << describe(a) << "second run:\n" << describe(b);

      // Stopped and resumed vs uninterrupted: the same training records (the
      // stopped run adds one evaluation at its stop), the same final evaluation.
      const std::vector<json> train_r = of_type(resumed, "train");
      EXPECT_EQ(train_a, train_r) << "max |loss difference| " << max_loss_difference(train_a, train_r)
                                  << "\nuninterrupted:\n" << describe(train_a)
                                  << "resumed:\n" << describe(train_r);
      ASSERT_FALSE(a.empty());
      ASSERT_FALSE(resumed.empty());
      EXPECT_EQ(a.back(), resumed.back());  // the final evaluation
      EXPECT_EQ(a.back().value("final", false), true) << a.back().dump();

      const Checkpoint ca = load_checkpoint(dir_.file("a" + v + "/checkpoint.ckpt"));
      const Checkpoint cb = load_checkpoint(dir_.file("b" + v + "/checkpoint.ckpt"));
      const Checkpoint cr = load_checkpoint(dir_.file("r" + v + "/checkpoint.ckpt"));
      EXPECT_EQ(ca.step, kSteps);
      EXPECT_EQ(cr.step, kSteps);
      EXPECT_TRUE(ca.params == cb.params && ca.adam_m == cb.adam_m && ca.adam_v == cb.adam_v)
          << "two identical runs end with different weights or AdamW moments";
      EXPECT_TRUE(ca.params == cr.params && ca.adam_m == cr.adam_m && ca.adam_v == cr.adam_v)
          << "the resumed run ends with different weights or AdamW moments";
    }
  }

  ScratchDir dir_;
};

TEST_F(TrainDeterminism, CpuRepeatsAndResumesBitForBit) { check_device("cpu"); }

TEST_F(TrainDeterminism, CudaRepeatsAndResumesBitForBit) {
  try {
    make_backend("cuda");
  } catch (const Error& e) {
    GTEST_SKIP() << "no CUDA GPU: " << e.what();
  }
  check_device("cuda");
}

}  // namespace test_determinism_cli
}  // namespace
}  // namespace lsgpt
