// A model whose vocabulary is not GPT-2's (1,000 tokens, end-of-text token
// 999) through the real binary: train, info, eval, generate, export, import.
// Nothing may fall back to GPT-2's 50257 tokens or its <|endoftext|> = 50256,
// and bad input must be refused before anything is printed.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "../io/io_test_support.h"
#include "data/token_file.h"
#include "io/checkpoint.h"
#include "io/hf_gpt2.h"

namespace lsgpt {
namespace {
namespace test_small_vocab {

using testing::quoted;
using testing::run_command;
using testing::ScratchDir;

constexpr auto lsgpt = testing::run_lsgpt;

// Refused with one error line and nothing printed before it.
void expect_only_error(const testing::CommandResult& r, const std::string& fragment) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.rfind("lsgpt: error: ", 0), 0u) << "output before the error: " << r.output;
  EXPECT_EQ(r.output.find("lsgpt: error: ", 1), std::string::npos) << "printed twice: " << r.output;
  EXPECT_NE(r.output.find(fragment), std::string::npos)
      << "missing '" << fragment << "' in " << r.output;
}

constexpr auto parse_ids = testing::parse_ints;

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// Tokens with some structure (a noisy counter modulo V), so training has
// something to learn.
std::vector<int32_t> small_vocab_tokens(size_t n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = int32_t((i * 7 + (rng() % 3)) % V);
  return t;
}

constexpr int kVocab = 1000;

class SmallVocab : public ::testing::Test {
 protected:
  void SetUp() override {
    write_token_file(dir_.file("train.bin"), kVocab, small_vocab_tokens(4000, kVocab, 1));
    write_token_file(dir_.file("valid.bin"), kVocab, small_vocab_tokens(1000, kVocab, 2));
  }
  std::string f(const std::string& name) const { return quoted(dir_.file(name)); }
  // A tiny LS model (1 of 2 heads local) on the 1000-token files.
  testing::CommandResult train(const std::string& extra = "") {
    return lsgpt("train --train " + f("train.bin") + " --valid " + f("valid.bin") +
                 " --out-dir " + f("run") +
                 " --vocab-size 1000 --n-layer 1 --n-head 2 --d-model 32 --seq-len 32"
                 " --n-local 1 --window 8 --steps 4 --batch-size 2 --eval-every 0"
                 " --final-eval-batches 2 --quiet" +
                 extra);
  }
  ScratchDir dir_;
};

TEST_F(SmallVocab, TrainEvalGenerateExportImportEndToEnd) {
  auto r = train();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string ckpt = f("run/checkpoint.ckpt");
  const Checkpoint ck = load_checkpoint(dir_.file("run/checkpoint.ckpt"));
  EXPECT_EQ(ck.model.vocab_size, kVocab);
  EXPECT_EQ(ck.model.eot_token, kVocab - 1);
  EXPECT_EQ(read_json(dir_.file("run/config.json"))["model"]["eot_token"], kVocab - 1);

  r = lsgpt("info --checkpoint " + ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("vocab 1000 (padded to 1024) | end-of-text token 999"),
            std::string::npos)
      << r.output;

  r = lsgpt("eval --checkpoint " + ckpt + " --data " + f("valid.bin") + " --batch-size 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The JSON line is on stdout, a summary on stderr (in either order here).
  const size_t brace = r.output.find("{\"");
  ASSERT_NE(brace, std::string::npos) << r.output;
  const std::string line = r.output.substr(brace, r.output.find('\n', brace) - brace);
  const double loss = nlohmann::json::parse(line)["loss"].get<double>();
  EXPECT_TRUE(std::isfinite(loss)) << r.output;
  EXPECT_LT(loss, 8.0) << r.output;  // ln(1000) = 6.9 at random; no GPT-2 sized softmax

  // From a prompt given as ids, and from an empty prompt (which starts at 999).
  for (const std::string prompt : {" --prompt-ids '1,2 3'", ""}) {
    for (const std::string cache : {"", " --no-cache"}) {
      r = lsgpt("generate --checkpoint " + ckpt + " --ids -n 10 --seed 3" + prompt + cache);
      ASSERT_EQ(r.exit_code, 0) << prompt << cache << ": " << r.output;
      const std::vector<int> ids = parse_ids(r.output);
      ASSERT_EQ(ids.size(), 10u) << r.output;
      for (int id : ids) EXPECT_TRUE(id >= 0 && id < kVocab) << r.output;
      EXPECT_EQ(r.output.find("50256"), std::string::npos) << r.output;
    }
  }

  // Export writes the model's own vocabulary and special token.
  r = lsgpt("export --checkpoint " + ckpt + " --out " + f("hf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json hf = read_json(dir_.file("hf/config.json"));
  EXPECT_EQ(hf["vocab_size"], kVocab);
  EXPECT_EQ(hf["eos_token_id"], kVocab - 1);
  EXPECT_EQ(hf["bos_token_id"], kVocab - 1);

  // A plain Hugging Face GPT-2 directory (no lsgpt_* keys) with vocab_size
  // 1000 and eos_token_id 999 imports, evaluates and generates.
  for (const char* key : {"lsgpt_n_local", "lsgpt_window", "lsgpt_span"}) hf.erase(key);
  std::ofstream(dir_.file("hf/config.json")) << hf.dump(2);
  r = lsgpt("import --in " + f("hf") + " --out " + f("imported.ckpt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint imp = load_checkpoint(dir_.file("imported.ckpt"));
  EXPECT_EQ(imp.model.vocab_size, kVocab);
  EXPECT_EQ(imp.model.eot_token, kVocab - 1);
  EXPECT_EQ(imp.params, ck.params);
  r = lsgpt("generate --checkpoint " + f("imported.ckpt") + " --ids -n 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(parse_ids(r.output).size(), 5u) << r.output;
  EXPECT_EQ(r.output.find("50256"), std::string::npos) << r.output;
  r = lsgpt("eval --checkpoint " + f("imported.ckpt") + " --data " + f("valid.bin") +
            " --batch-size 2 --max-batches 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // Fine-tuning from the import on the same token files.
  r = lsgpt("train --init-from " + f("imported.ckpt") + " --train " + f("train.bin") +
            " --valid " + f("valid.bin") + " --out-dir " + f("tuned") +
            " --vocab-size 1000 --n-layer 1 --n-head 2 --d-model 32 --seq-len 32 --n-local 0"
            " --steps 2 --batch-size 2 --eval-every 0 --final-eval-batches 1 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // An eos_token_id other than the last token is kept, and exported again.
  hf["eos_token_id"] = 5, hf["bos_token_id"] = 5;
  std::ofstream(dir_.file("hf/config.json")) << hf.dump(2);
  r = lsgpt("import --in " + f("hf") + " --out " + f("eos5.ckpt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(load_checkpoint(dir_.file("eos5.ckpt")).model.eot_token, 5);
  r = lsgpt("info --checkpoint " + f("eos5.ckpt"));
  EXPECT_NE(r.output.find("end-of-text token 5\n"), std::string::npos) << r.output;
  r = lsgpt("export --checkpoint " + f("eos5.ckpt") + " --out " + f("hf5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_json(dir_.file("hf5/config.json"))["eos_token_id"], 5);

  // Special tokens that do not fit are refused.
  hf["eos_token_id"] = 1000, hf["bos_token_id"] = 1000;
  std::ofstream(dir_.file("hf/config.json")) << hf.dump(2);
  expect_only_error(lsgpt("import --in " + f("hf") + " --out " + f("bad.ckpt")),
                    "end-of-text token 1000");
  hf["eos_token_id"] = 7, hf["bos_token_id"] = 8;
  std::ofstream(dir_.file("hf/config.json")) << hf.dump(2);
  expect_only_error(lsgpt("import --in " + f("hf") + " --out " + f("bad.ckpt")),
                    "bos_token_id 8 differs from eos_token_id 7");
}

TEST_F(SmallVocab, BadInputIsRefusedBeforeAnyOutput) {
  ASSERT_EQ(train().exit_code, 0);
  const std::string gen = "generate --checkpoint " + f("run/checkpoint.ckpt");
  // Text needs GPT-2's tokenizer, whose vocabulary is not this model's: one
  // error, and the prompt is not printed first.
  expect_only_error(lsgpt(gen + " --prompt 'Hello world' -n 3"), "tokenizer");
  expect_only_error(lsgpt(gen + " -n 3"), "use --ids");
  expect_only_error(lsgpt(gen + " --ids --prompt 'Hello' -n 3"), "1000 tokens");
  // Prompt ids outside the vocabulary, malformed or too long; bad settings.
  expect_only_error(lsgpt(gen + " --ids --prompt-ids '1 1000' -n 3"), "token 1000");
  expect_only_error(lsgpt(gen + " --ids --prompt-ids '1 x' -n 3"), "'x'");
  expect_only_error(lsgpt(gen + " --ids --prompt-ids ',' -n 3"), "at least one");
  // Prompt + new tokens may fill the context (32) plus one.
  expect_only_error(lsgpt(gen + " --ids --prompt-ids '1 2' -n 32"), "at most 31 new tokens");
  expect_only_error(lsgpt(gen + " --ids --prompt-ids '1 2' --top-p 2"), "top");
  expect_only_error(lsgpt(gen + " --ids --prompt-ids '1 2' --tokens=-1"), "--tokens");
  expect_only_error(lsgpt(gen + " --ids --prompt-ids '1' --prompt 'a'"), "not several");

  // A token file made with another vocabulary.
  std::vector<int32_t> gpt2(100, 50256);
  write_token_file(dir_.file("gpt2.bin"), 50257, gpt2);
  expect_only_error(lsgpt("eval --checkpoint " + f("run/checkpoint.ckpt") + " --data " +
                          f("gpt2.bin")),
                    "vocabulary of 50257 tokens; this model uses 1000");
  expect_only_error(lsgpt("eval --checkpoint " + f("run/checkpoint.ckpt") + " --data " +
                          f("valid.bin") + " --max-batches=-1"),
                    "--max-batches");
  expect_only_error(lsgpt("train --train " + f("train.bin") + " --valid " + f("valid.bin") +
                          " --out-dir " + f("run2") +
                          " --n-layer 1 --n-head 2 --d-model 32 --seq-len 32 --steps 1 --quiet"),
                    "--vocab-size");
  expect_only_error(lsgpt("train --train " + f("train.bin") + " --valid " + f("valid.bin") +
                          " --out-dir " + f("run3") + " --vocab-size 1000 --eot-token 1000"
                          " --n-layer 1 --n-head 2 --d-model 32 --seq-len 32 --steps 1 --quiet"),
                    "eot_token 1000 is outside the vocabulary of 1000");
}

// The report of issue 12: a plain Hugging Face GPT-2 with vocab_size 1000 and
// eos_token_id 999, imported and sampled. Generation used to start from
// GPT-2's 50256 ("token 50256 is outside the vocabulary of 1000"), and a text
// prompt was printed before the failure.
TEST_F(SmallVocab, ImportedHuggingFaceModelWithItsOwnVocabularyGenerates) {
  ModelConfig cfg = testing::tiny_config({0}, 100);
  cfg.vocab_size = kVocab;
  cfg.eot_token = -1;
  cfg.seq_len = 32;
  cfg.normalize_and_validate();
  export_hf_gpt2(cfg, testing::random_params(cfg, 31), dir_.file("hf"));
  nlohmann::json hf = read_json(dir_.file("hf/config.json"));
  for (const char* key : {"lsgpt_n_local", "lsgpt_window", "lsgpt_span"}) hf.erase(key);
  ASSERT_EQ(hf["eos_token_id"], 999);
  std::ofstream(dir_.file("hf/config.json")) << hf.dump(2);
  auto r = lsgpt("import --in " + f("hf") + " --out " + f("m.ckpt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string cache : {"", " --no-cache"}) {
    r = lsgpt("generate --checkpoint " + f("m.ckpt") + " --ids -n 6" + cache);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(parse_ids(r.output).size(), 6u) << r.output;
    EXPECT_EQ(r.output.find("50256"), std::string::npos) << r.output;
  }
  expect_only_error(lsgpt("generate --checkpoint " + f("m.ckpt") + " --prompt 'Hello' -n 3"),
                    "tokenizer");
}

TEST_F(SmallVocab, GptTwoVocabularyKeepsItsEndOfText) {
  auto r = lsgpt("info --n-layer 1 --n-head 1 --d-model 8 --seq-len 8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("vocab 50257 (padded to 50304) | end-of-text token 50256"),
            std::string::npos)
      << r.output;
  r = lsgpt("info --vocab-size 300 --eot-token 0 --n-layer 1 --n-head 1 --d-model 8 --seq-len 8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("vocab 300 (padded to 320) | end-of-text token 0"), std::string::npos)
      << r.output;
}

}  // namespace test_small_vocab
}  // namespace
}  // namespace lsgpt
