// `lsgpt export` and `lsgpt import` as a user runs them: the round trip is
// byte-identical, and bad input gets one error line, exit code 1 and no file.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/hf_gpt2.h"
#include "io_test_support.h"

namespace lsgpt {
namespace {
namespace test_io_cli {

using testing::quoted;
using testing::read_bytes;
using testing::run_command;
using testing::ScratchDir;

testing::CommandResult lsgpt(const std::string& args) {
  return run_command(quoted(LSGPT_BINARY) + " " + args);
}

void expect_one_error(const testing::CommandResult& r, const std::string& fragment) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.rfind("lsgpt: error: ", 0), 0u) << r.output;
  EXPECT_EQ(r.output.find("lsgpt: error: ", 1), std::string::npos) << "printed twice: " << r.output;
  EXPECT_NE(r.output.find(fragment), std::string::npos) << "missing '" << fragment << "' in " << r.output;
}

TEST(IoCli, ExportImportExportIsByteIdentical) {
  ScratchDir dir;
  ModelConfig cfg = testing::tiny_config({1, 2}, 3);
  cfg.span = SpanConfig::parse("k:cross:2:1");
  const Checkpoint ck = testing::random_checkpoint(cfg, 21, true);
  save_checkpoint(dir.file("a.ckpt"), ck);

  auto r = lsgpt("export --checkpoint " + quoted(dir.file("a.ckpt")) + " --out " + quoted(dir.file("e1")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = lsgpt("import --in " + quoted(dir.file("e1")) + " --out " + quoted(dir.file("b.ckpt")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("local per layer: 1,2"), std::string::npos) << r.output;
  r = lsgpt("export --checkpoint " + quoted(dir.file("b.ckpt")) + " --out " + quoted(dir.file("e2")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* f : {"/model.safetensors", "/config.json"})
    EXPECT_EQ(read_bytes(dir.file("e1") + f), read_bytes(dir.file("e2") + f)) << f;

  // The CLI writes exactly what the library writes.
  export_hf_gpt2(ck.model, ck.params, dir.file("lib"));
  EXPECT_EQ(read_bytes(dir.file("lib/model.safetensors")), read_bytes(dir.file("e1/model.safetensors")));

  const Checkpoint b = load_checkpoint(dir.file("b.ckpt"));
  EXPECT_TRUE(b.model == ck.model);
  EXPECT_EQ(b.params, ck.params);
  EXPECT_EQ(b.step, 0);
  EXPECT_TRUE(b.adam_m.empty());
}

TEST(IoCli, ImportTurnsHeadsLocal) {
  ScratchDir dir;
  const ModelConfig cfg = testing::tiny_config({0}, 100);
  export_hf_gpt2(cfg, testing::random_params(cfg, 22), dir.file("hf"));
  auto r = lsgpt("import --in " + quoted(dir.file("hf/model.safetensors")) + " --config " +
                 quoted(dir.file("hf/config.json")) + " --out " + quoted(dir.file("ls.ckpt")) +
                 " --n-local 1,2 --window 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Checkpoint ck = load_checkpoint(dir.file("ls.ckpt"));
  EXPECT_EQ(ck.model.n_local, (std::vector<int>{1, 2}));
  EXPECT_EQ(ck.model.window, 5);
}

TEST(IoCli, BadInputIsOneClearErrorAndWritesNothing) {
  ScratchDir dir;
  const ModelConfig cfg = testing::tiny_config({0});
  const Checkpoint ck = testing::random_checkpoint(cfg, 23, false);
  save_checkpoint(dir.file("good.ckpt"), ck);
  export_hf_gpt2(cfg, ck.params, dir.file("hf"));

  expect_one_error(lsgpt("export --checkpoint " + quoted(dir.file("none.ckpt")) + " --out " +
                         quoted(dir.file("x"))),
                   "none.ckpt");
  auto bytes = read_bytes(dir.file("good.ckpt"));
  bytes.resize(bytes.size() - 10);
  testing::write_bytes(dir.file("cut.ckpt"), bytes);
  expect_one_error(lsgpt("export --checkpoint " + quoted(dir.file("cut.ckpt")) + " --out " +
                         quoted(dir.file("x"))),
                   "truncated");

  testing::write_bytes(dir.file("junk.safetensors"), {100, 0, 0, 0, 0, 0, 0, 0, '{'});
  expect_one_error(lsgpt("import --in " + quoted(dir.file("junk.safetensors")) + " --out " +
                         quoted(dir.file("y.ckpt"))),
                   "runs past the end");
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf")) + " --out " +
                         quoted(dir.file("y.ckpt")) + " --n-local two"),
                   "--n-local");
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf")) + " --out " +
                         quoted(dir.file("y.ckpt")) + " --n-local 3"),
                   "n_local");
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf")) + " --out " +
                         quoted(dir.file("no/dir/y.ckpt"))),
                   "No such file or directory");
  // The output naming an input used to replace the weights with the checkpoint.
  const auto weights = read_bytes(dir.file("hf/model.safetensors"));
  const auto hf_config = read_bytes(dir.file("hf/config.json"));
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf/model.safetensors")) + " --out " +
                         quoted(dir.file("hf/model.safetensors"))),
                   "is also an input; it would be overwritten");
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf")) + " --out " +
                         quoted(dir.file("hf/config.json"))),
                   "is also an input; it would be overwritten");
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf")) + " --out " +
                         quoted(dir.file("hf/./model.safetensors"))),
                   "is also an input; it would be overwritten");
  EXPECT_EQ(read_bytes(dir.file("hf/model.safetensors")), weights);
  EXPECT_EQ(read_bytes(dir.file("hf/config.json")), hf_config);
  // A directory as the config: used to be the bare 'basic_filebuf::underflow error ...'.
  expect_one_error(lsgpt("import --in " + quoted(dir.file("hf/model.safetensors")) + " --config " +
                         quoted(dir.file("hf")) + " --out " + quoted(dir.file("y.ckpt"))),
                   "hf' is a directory, not a config file");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"cut.ckpt", "good.ckpt", "hf", "junk.safetensors"}));
  EXPECT_NE(lsgpt("import --out " + quoted(dir.file("y.ckpt"))).exit_code, 0);
}

// `--out RUN_DIR` used to replace the run's config.json (its settings) with
// the Hugging Face config; an earlier export's config may still be replaced.
TEST(IoCli, ExportRefusesToReplaceAConfigThatIsNotAHuggingFaceOne) {
  ScratchDir dir;
  const ModelConfig cfg = testing::tiny_config({0});
  save_checkpoint(dir.file("a.ckpt"), testing::random_checkpoint(cfg, 24, true));
  const std::string run_config = "{\"model\": {}, \"train\": {\"lr\": 0.001}}";
  std::filesystem::create_directories(dir.file("run"));
  testing::write_bytes(dir.file("run/config.json"),
                       std::vector<uint8_t>(run_config.begin(), run_config.end()));
  expect_one_error(lsgpt("export --checkpoint " + quoted(dir.file("a.ckpt")) + " --out " +
                         quoted(dir.file("run"))),
                   "config.json' exists and is not a Hugging Face config");
  const auto kept = read_bytes(dir.file("run/config.json"));
  EXPECT_EQ(std::string(kept.begin(), kept.end()), run_config);
  EXPECT_FALSE(std::filesystem::exists(dir.file("run/model.safetensors")));

  for (int i = 0; i < 2; ++i) {  // the second export replaces the first
    const auto r = lsgpt("export --checkpoint " + quoted(dir.file("a.ckpt")) + " --out " +
                         quoted(dir.file("hf")));
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }
}

}  // namespace test_io_cli
}  // namespace
}  // namespace lsgpt
