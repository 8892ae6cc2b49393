// Bad input through the real binary: each case must end with one clear error
// line and a non-zero exit status, never a crash, a stack trace or a
// half-written output file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "../ops/cuda/cuda_test_util.h"
#include "data/token_file.h"

namespace {
namespace test_cli_errors {

namespace fs = std::filesystem;

struct Outcome {
  int exit_code = -1;  // -1: killed by a signal
  std::string output;  // stdout and stderr together
};

Outcome run(const std::string& args, const std::string& stdin_text = "") {
  std::string cmd = std::string(LSGPT_BINARY) + " " + args + " 2>&1";
  if (!stdin_text.empty()) {
    const fs::path in = fs::path(::testing::TempDir()) / ("lsgpt_cli_stdin_" + std::to_string(::getpid()) + ".txt");
    std::ofstream(in) << stdin_text;
    cmd += " < " + in.string();
  } else {
    cmd += " < /dev/null";
  }
  Outcome o;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) o.output.append(buf.data(), n);
  const int status = pclose(p);
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return o;
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t c = 0;
  for (size_t pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1))
    ++c;
  return c;
}

// A clean refusal: non-zero exit (not a signal), the expected words, no crash text.
void expect_refusal(const Outcome& o, const std::string& words) {
  EXPECT_GT(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find(words), std::string::npos) << "expected '" << words << "' in:\n"
                                                     << o.output;
  EXPECT_EQ(o.output.find("terminate called"), std::string::npos) << o.output;
  EXPECT_EQ(o.output.find("Segmentation"), std::string::npos) << o.output;
  EXPECT_LE(count(o.output, "lsgpt: error:"), 1u) << o.output;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test and process: CTest runs these tests in parallel.
    dir_ = fs::path(::testing::TempDir()) /
           ("lsgpt_cli_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::mt19937 rng(1);
    std::vector<int32_t> tokens(3000);
    for (auto& t : tokens) t = int32_t(rng() % 50257);
    train_ = (dir_ / "train.bin").string();
    lsgpt::write_token_file(train_, 50257, tokens);
    tokens.resize(5);
    tiny_ = (dir_ / "tiny.bin").string();
    lsgpt::write_token_file(tiny_, 50257, tokens);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path(name)) << text;
    return path(name);
  }
  std::string small_model() const {
    return " --n-layer 1 --n-head 1 --d-model 16 --seq-len 16 --n-local 0 ";
  }
  fs::path dir_;
  std::string train_, tiny_;
};

TEST_F(Cli, UnknownFlagsAndSubcommands) {
  expect_refusal(run("train --no-such-flag"), "no-such-flag");
  expect_refusal(run("frobnicate"), "subcommand");
  expect_refusal(run(""), "subcommand");
  for (const char* sub : {"prepare", "train", "eval", "generate", "tokenize", "info"}) {
    const Outcome help = run(std::string(sub) + " --help");
    EXPECT_EQ(help.exit_code, 0) << sub;
    EXPECT_NE(help.output.find("--help"), std::string::npos) << sub;
  }
}

TEST_F(Cli, InvalidOrContradictoryModelConfig) {
  const std::string data = " --train " + train_ + " --valid " + train_;
  expect_refusal(run("train --n-head 4 --n-local 5 --d-model 64" + data), "n_local");
  expect_refusal(run("train --window 0" + data), "window must be >= 1");
  expect_refusal(run("train --n-head 3 --d-model 64" + data), "divisible by n_head");
  expect_refusal(run("train --span q:wide:1:1" + data), "unknown basis");
  expect_refusal(run("train --span v:cross:2:1" + data), "self basis only");
  expect_refusal(run("train --span q:cross:nan:1" + data), "finite");
  expect_refusal(run("train --config " + write("bad.json", "{\"n_layer\": ") + data),
                 "not valid JSON");
  expect_refusal(run("train --config " + path("missing.json") + data), "cannot open config");
  expect_refusal(run("train --lr -1" + small_model() + data), "--lr");
}

// The training window's errors used to name --seq-len, the model's context,
// which the user had not given or had given a valid value.
TEST_F(Cli, TrainSeqLenErrorsNameTrainSeqLen) {
  const std::string data = " --train " + train_ + " --valid " + train_ + small_model();
  expect_refusal(run("train --train-seq-len 17" + data),
                 "--train-seq-len 17 exceeds the model's context of 16 positions");
  expect_refusal(run("train --train-seq-len -1" + data),
                 "--train-seq-len must be >= 0 (0: the model's context), got -1");
}

TEST_F(Cli, BadStabiliserSettings) {
  const std::string data = " --train " + train_ + " --valid " + train_ + small_model();
  expect_refusal(run("train --z-loss -1e-4" + data), "--z-loss must be >= 0");
  expect_refusal(run("train --adagc --adagc-beta 1" + data), "--adagc-beta must be in [0, 1)");
  expect_refusal(run("train --adagc --adagc-beta -0.1" + data), "--adagc-beta");
  expect_refusal(run("train --adagc --adagc-lambda-rel 0" + data), "--adagc-lambda-rel must be");
  expect_refusal(run("train --adagc --adagc-lambda-abs -1" + data), "--adagc-lambda-abs must be");
  expect_refusal(run("train --adagc --adagc-warmup 0" + data), "--adagc-warmup must be >= 1");
  expect_refusal(run("train --config " + write("z.json", "{\"z_loss\": -1}") + data),
                 "z_loss must be a finite number >= 0");
}

TEST_F(Cli, InfoShowsTheStabilisers) {
  const Outcome plain = run("info" + small_model());
  EXPECT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_NE(plain.output.find("stabilisers: QK-norm off | z-loss off"), std::string::npos)
      << plain.output;
  const Outcome on = run("info --qk-norm --z-loss 1e-4" + small_model());
  EXPECT_EQ(on.exit_code, 0) << on.output;
  EXPECT_NE(on.output.find("QK-norm on"), std::string::npos) << on.output;
  EXPECT_NE(on.output.find("z-loss 0.0001"), std::string::npos) << on.output;
  const Outcome js = run("info --json --qk-norm --z-loss 1e-4" + small_model());
  EXPECT_NE(js.output.find("\"qk_norm\": true"), std::string::npos) << js.output;
  EXPECT_NE(js.output.find("\"z_loss\": 0.0001"), std::string::npos) << js.output;
}

// A window is only shown where some layer has local heads.
TEST_F(Cli, InfoNamesTheAttention) {
  const Outcome mhsa = run("info" + small_model());
  EXPECT_NE(mhsa.output.find("attention: MHSA in every layer (no local heads)"), std::string::npos)
      << mhsa.output;
  EXPECT_EQ(mhsa.output.find("window"), std::string::npos) << mhsa.output;
  const Outcome ls = run("info --n-layer 2 --n-head 4 --d-model 32 --seq-len 16 --n-local 3 "
                         "--window 5");
  EXPECT_NE(ls.output.find("local heads per layer [3, 3] of 4, window w = 5\n"),
            std::string::npos)
      << ls.output;
}

TEST_F(Cli, MissingEmptyOrTooShortData) {
  expect_refusal(run("train" + small_model()), "no training data");
  expect_refusal(run("train --train " + path("none.bin") + " --valid " + train_ + small_model()),
                 "none.bin");
  write("empty.bin", "");
  expect_refusal(run("train --train " + path("empty.bin") + " --valid " + train_ + small_model()),
                 "empty.bin");
  expect_refusal(run("train --train " + tiny_ + " --valid " + train_ + small_model()), "tiny.bin");
  expect_refusal(run("prepare " + write("empty.txt", "") + " -o " + path("out.bin")), "empty");
  EXPECT_FALSE(fs::exists(path("out.bin")));
}

TEST_F(Cli, TokenFileOfAnotherVocabulary) {
  std::vector<int32_t> tokens(100, 3);
  lsgpt::write_token_file(path("v100.bin"), 100, tokens);
  expect_refusal(
      run("train --train " + path("v100.bin") + " --valid " + path("v100.bin") + small_model()),
      "vocabulary");
}

TEST_F(Cli, CorruptCheckpointAndLongPrompt) {
  const std::string out = path("run");
  const Outcome trained = run("train --quiet --steps 2 --batch-size 2 --eval-every 0 --out-dir " +
                              out + " --train " + train_ + " --valid " + train_ + small_model());
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const std::string ckpt = out + "/checkpoint.ckpt";
  // Truncated copy.
  {
    std::ifstream in(ckpt, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(path("truncated.ckpt"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    bytes[bytes.size() / 2] ^= 0x40;
    std::ofstream(path("flipped.ckpt"), std::ios::binary) << bytes;
  }
  expect_refusal(run("eval --checkpoint " + path("truncated.ckpt") + " --data " + train_),
                 "truncated.ckpt");
  expect_refusal(run("eval --checkpoint " + path("flipped.ckpt") + " --data " + train_),
                 "flipped.ckpt");
  expect_refusal(run("train --resume " + path("flipped.ckpt")), "flipped.ckpt");
  expect_refusal(run("generate --checkpoint " + path("nothing.ckpt") + " --prompt hi"),
                 "nothing.ckpt");
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += " word";
  expect_refusal(run("generate --checkpoint " + ckpt + " --prompt '" + long_prompt + "'"),
                 "context");
  expect_refusal(run("generate --checkpoint " + ckpt + " --prompt hi --top-p 0"), "--top-p");
  const Outcome ok = run("generate --checkpoint " + ckpt + " --prompt hi -n 5 --seed 3");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  // --logits-out naming an input used to replace the checkpoint (or the data) with the .npy.
  const auto ckpt_size = fs::file_size(ckpt), data_size = fs::file_size(train_);
  expect_refusal(run("eval --checkpoint " + ckpt + " --data " + train_ + " --logits-out " + ckpt),
                 "--logits-out " + ckpt + " is also an input; it would be overwritten");
  expect_refusal(run("eval --checkpoint " + ckpt + " --data " + train_ + " --logits-out " +
                     path("run/../train.bin")),
                 "is also an input; it would be overwritten");
  EXPECT_EQ(fs::file_size(ckpt), ckpt_size);
  EXPECT_EQ(fs::file_size(train_), data_size);
  const Outcome info = run("info --checkpoint " + ckpt);
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("span gradient scaling: off"), std::string::npos) << info.output;
}

// The CLI end to end on the GPU: train, eval and generate with --device cuda,
// and a checkpoint trained there evaluates to the same loss on the CPU. With
// no usable GPU, --device cuda must be one clean refusal that writes nothing.
TEST_F(Cli, TrainEvalAndGenerateOnCuda) {
  const std::string model = " --n-layer 2 --n-head 2 --d-model 128 --seq-len 64 --n-local 1 --window 20 ";
  const std::string out = path("gpu_run");
  const std::string ckpt = out + "/checkpoint.ckpt";
  const Outcome trained = run("train --device cuda --quiet --steps 20 --batch-size 4 --eval-every 10 "
                              "--out-dir " + out + " --train " + train_ + " --valid " + train_ + model);
  std::string why_not;
  if (!lsgpt::cuda_test::cuda_backend(why_not)) {
    expect_refusal(trained, "CUDA");
    EXPECT_FALSE(fs::exists(ckpt));
    GTEST_SKIP() << "no CUDA GPU (" << why_not << "); checked only the clean refusal";
  }
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  auto eval_loss = [&](const std::string& device) {
    const Outcome o = run("eval --device " + device + " --checkpoint " + ckpt + " --data " + train_);
    EXPECT_EQ(o.exit_code, 0) << o.output;
    const size_t start = o.output.find("{\"");
    if (start == std::string::npos) return std::nan("");
    return nlohmann::json::parse(o.output.substr(start, o.output.find('\n', start) - start))
        .at("loss")
        .get<double>();
  };
  const double gpu_loss = eval_loss("cuda"), cpu_loss = eval_loss("cpu");
  EXPECT_TRUE(std::isfinite(gpu_loss));
  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-2 * cpu_loss);  // bf16 activations on the GPU
  const Outcome sample = run("generate --device cuda --checkpoint " + ckpt + " --prompt hi -n 8 --seed 3");
  EXPECT_EQ(sample.exit_code, 0) << sample.output;
  EXPECT_GT(sample.output.size(), 2u) << sample.output;
}

// The stabilisers end to end on the GPU: QK-norm, z-loss and AdaGC train,
// log their terms, and the checkpoint evaluates to the same loss on the CPU
// (bf16 activations on the GPU) and generates on the GPU.
TEST_F(Cli, StabilisersTrainOnCudaAndEvaluateOnCpu) {
  std::string why_not;
  if (!lsgpt::cuda_test::cuda_backend(why_not))
    GTEST_SKIP() << "no CUDA GPU: " << why_not;
  const std::string model = " --n-layer 2 --n-head 2 --d-model 128 --seq-len 64 --n-local 1 "
                            "--window 20 --qk-norm --z-loss 1e-4 ";
  const std::string out = path("gpu_stab");
  const std::string ckpt = out + "/checkpoint.ckpt";
  const Outcome trained = run("train --device cuda --quiet --steps 20 --batch-size 4 "
                              "--eval-every 10 --adagc --adagc-warmup 5 --out-dir " + out +
                              " --train " + train_ + " --valid " + train_ + model);
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  std::ifstream metrics(out + "/metrics.jsonl");
  std::string line;
  int train_lines = 0;
  while (std::getline(metrics, line)) {
    const nlohmann::json r = nlohmann::json::parse(line);
    if (r["type"] != "train") continue;
    ++train_lines;
    EXPECT_GT(r.at("z_loss").get<double>(), 0.0) << line;
    EXPECT_TRUE(r.at("adagc_clipped").is_number_integer()) << line;
  }
  EXPECT_EQ(train_lines, 20);
  auto eval_loss = [&](const std::string& device) {
    const Outcome o = run("eval --device " + device + " --checkpoint " + ckpt + " --data " + train_);
    EXPECT_EQ(o.exit_code, 0) << o.output;
    const size_t start = o.output.find("{\"");
    if (start == std::string::npos) return std::nan("");
    return nlohmann::json::parse(o.output.substr(start, o.output.find('\n', start) - start))
        .at("loss")
        .get<double>();
  };
  const double gpu_loss = eval_loss("cuda"), cpu_loss = eval_loss("cpu");
  EXPECT_TRUE(std::isfinite(gpu_loss));
  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-2 * cpu_loss);
  const Outcome sample = run("generate --device cuda --checkpoint " + ckpt + " --prompt hi -n 8 --seed 3");
  EXPECT_EQ(sample.exit_code, 0) << sample.output;
}

}  // namespace test_cli_errors
}  // namespace
