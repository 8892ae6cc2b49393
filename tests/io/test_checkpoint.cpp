// Checkpoint files: bit-exact round trips, and one clear refusal for every way
// a file can be wrong.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/checkpoint.h"
#include "io_test_support.h"
#include "model/params.h"

namespace lsgpt {
namespace {
namespace test_checkpoint {

using json = nlohmann::json;
using testing::random_checkpoint;
using testing::read_bytes;
using testing::ScratchDir;
using testing::tiny_config;
using testing::write_bytes;

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Expects `fn` to throw lsgpt::Error whose message contains every fragment.
template <typename Fn>
void expect_error(Fn&& fn, std::vector<std::string> fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected an lsgpt::Error containing '" << fragments[0] << "'";
  } catch (const Error& e) {
    for (const std::string& f : fragments)
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << f;
  }
}

// Builds a file in the documented format from parts, independently of the writer.
std::vector<uint8_t> craft(const json& header, const std::vector<float>& data,
                           uint32_t version = kCheckpointVersion) {
  const std::string text = header.dump();
  std::vector<uint8_t> out{'L', 'S', 'G', 'P', 'T', 'C', 'K', 'P'};
  auto put32 = [&](uint32_t x) {
    for (int i = 0; i < 4; ++i) out.push_back(uint8_t(x >> (8 * i)));
  };
  put32(version);
  put32(uint32_t(text.size()));
  out.insert(out.end(), text.begin(), text.end());
  const uint8_t* d = reinterpret_cast<const uint8_t*>(data.data());
  out.insert(out.end(), d, d + 4 * data.size());
  put32(uint32_t(crc32(0, out.data(), uInt(out.size()))));
  return out;
}

json header_for(const ModelConfig& cfg, std::vector<std::pair<std::string, uint64_t>> tensors) {
  json table = json::array();
  uint64_t offset = 0;
  for (auto& [name, count] : tensors) {
    table.push_back({{"name", name}, {"offset", offset}, {"count", count}});
    offset += 4 * count;
  }
  return {{"model", cfg.to_json()}, {"train", json::object()}, {"state", json::object()},
          {"step", 3}, {"tensors", table}};
}

TEST(Checkpoint, RoundTripIsBitExactWithOptimizerState) {
  ScratchDir dir;
  ModelConfig cfg = tiny_config();
  cfg.span = SpanConfig::parse("q:cross:1.5:1,k:self:0.5:2");
  Checkpoint ck = random_checkpoint(cfg, 7, true);
  // Values whose bits a careless text or double round trip would change.
  ck.params[0] = -0.0f;
  ck.params[1] = std::numeric_limits<float>::denorm_min();
  ck.params[2] = std::numeric_limits<float>::infinity();
  ck.params[3] = 1.0f + std::numeric_limits<float>::epsilon();
  ck.adam_m[5] = std::numeric_limits<float>::quiet_NaN();
  save_checkpoint(dir.file("a.ckpt"), ck);
  const Checkpoint back = load_checkpoint(dir.file("a.ckpt"));
  EXPECT_TRUE(back.model == ck.model);
  EXPECT_EQ(back.model.span.to_string(), cfg.span.to_string());
  EXPECT_EQ(back.step, 1234);
  EXPECT_EQ(back.train, ck.train);
  EXPECT_EQ(back.state, ck.state);
  EXPECT_EQ(back.state["rng"][0].get<uint64_t>(), 0xfedcba9876543210ull);
  EXPECT_TRUE(same_bits(back.params, ck.params));
  EXPECT_TRUE(same_bits(back.adam_m, ck.adam_m));
  EXPECT_TRUE(same_bits(back.adam_v, ck.adam_v));
  EXPECT_EQ(read_bytes(dir.file("a.ckpt")), serialize_checkpoint(ck));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"a.ckpt"});
}

// The loader checks sizes with the O(1) count before any layout is built.
TEST(Checkpoint, ParameterCountEqualsTheLayoutTotal) {
  for (const ModelConfig& cfg : {tiny_config(), tiny_config({0}, 1)})
    EXPECT_EQ(cfg.num_parameters(), make_param_layout(cfg).total);
  ModelConfig big;
  big.n_layer = 12, big.n_head = 12, big.d_model = 768, big.seq_len = 1024, big.vocab_size = 50257;
  big.normalize_and_validate();
  EXPECT_EQ(big.num_parameters(), make_param_layout(big).total);
}

TEST(Checkpoint, RoundTripWithoutOptimizerState) {
  ScratchDir dir;
  const Checkpoint ck = random_checkpoint(tiny_config({0}), 8, false);
  save_checkpoint(dir.file("b.ckpt"), ck);
  const Checkpoint back = load_checkpoint(dir.file("b.ckpt"));
  EXPECT_TRUE(same_bits(back.params, ck.params));
  EXPECT_TRUE(back.adam_m.empty());
  EXPECT_TRUE(back.adam_v.empty());
  EXPECT_EQ(back.model.n_local, (std::vector<int>{0, 0}));
}

TEST(Checkpoint, SaveOverwritesAtomicallyAndRefusesBadInput) {
  ScratchDir dir;
  const std::string path = dir.file("c.ckpt");
  Checkpoint ck = random_checkpoint(tiny_config(), 9, true);
  save_checkpoint(path, ck);
  const auto before = read_bytes(path);
  Checkpoint bad = ck;
  bad.params.pop_back();
  expect_error([&] { save_checkpoint(path, bad); }, {"parameters"});
  bad = ck;
  bad.adam_v.clear();
  expect_error([&] { save_checkpoint(path, bad); }, {"optimizer state"});
  EXPECT_EQ(read_bytes(path), before);
  expect_error([&] { save_checkpoint(dir.file("missing/dir/x.ckpt"), ck); },
               {"missing/dir/x.ckpt", "No such file or directory"});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"c.ckpt"});
}

TEST(Checkpoint, SavesSettingsThatAreNotUtf8) {
  ScratchDir dir;
  Checkpoint ck = random_checkpoint(tiny_config(), 10, false);
  ck.train["data_dir"] = std::string("runs/\xff\xfe");  // a Linux path need not be UTF-8
  save_checkpoint(dir.file("u.ckpt"), ck);
  const Checkpoint back = load_checkpoint(dir.file("u.ckpt"));
  EXPECT_EQ(back.train["data_dir"].get<std::string>().substr(0, 5), "runs/");
  EXPECT_TRUE(same_bits(back.params, ck.params));
}

TEST(Checkpoint, RefusesMissingShortAndForeignFiles) {
  ScratchDir dir;
  expect_error([&] { load_checkpoint(dir.file("nope.ckpt")); }, {"nope.ckpt", "cannot open"});
  write_bytes(dir.file("empty.ckpt"), {});
  expect_error([&] { load_checkpoint(dir.file("empty.ckpt")); }, {"too short"});
  write_bytes(dir.file("short.ckpt"), {'L', 'S', 'G', 'P', 'T', 'C', 'K', 'P', 1, 0, 0});
  expect_error([&] { load_checkpoint(dir.file("short.ckpt")); }, {"too short"});
  auto bytes = serialize_checkpoint(random_checkpoint(tiny_config(), 1, false));
  bytes[0] = 'X';
  write_bytes(dir.file("magic.ckpt"), bytes);
  expect_error([&] { load_checkpoint(dir.file("magic.ckpt")); }, {"magic.ckpt", "bad magic"});
  bytes[0] = 'L';
  bytes[8] = 2;
  write_bytes(dir.file("version.ckpt"), bytes);
  expect_error([&] { load_checkpoint(dir.file("version.ckpt")); }, {"unknown format version 2"});
}

TEST(Checkpoint, RefusesTruncationAtEveryStage) {
  const auto bytes = serialize_checkpoint(random_checkpoint(tiny_config(), 2, true));
  const std::vector<size_t> cuts = {20, 40, 200, bytes.size() / 2, bytes.size() - 5,
                                    bytes.size() - 1};
  for (size_t cut : cuts) {
    std::vector<uint8_t> part(bytes.begin(), bytes.begin() + cut);
    expect_error([&] { parse_checkpoint(part, "cut"); }, {"truncated"});
  }
  auto longer = bytes;
  longer.push_back(0);
  expect_error([&] { parse_checkpoint(longer, "long"); }, {"corrupt", "unexpected bytes"});
}

TEST(Checkpoint, RefusesFlippedBitsAnywhere) {
  const auto bytes = serialize_checkpoint(random_checkpoint(tiny_config(), 3, true));
  std::mt19937 rng(5);
  // Skip the magic, version and length (refused by their own checks above).
  std::uniform_int_distribution<size_t> pos(16, bytes.size() - 1);
  for (int trial = 0; trial < 200; ++trial) {
    auto flipped = bytes;
    const size_t at = trial == 0 ? bytes.size() - 1 : pos(rng);  // 0: inside the CRC itself
    flipped[at] ^= uint8_t(1u << (trial % 8));
    try {
      parse_checkpoint(flipped, "flip");
      ADD_FAILURE() << "bit flip at byte " << at << " was accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      // A flip inside a length field in the header reads as truncation; all else as corruption.
      EXPECT_TRUE(msg.find("corrupt") != std::string::npos ||
                  msg.find("truncated") != std::string::npos)
          << msg;
    }
  }
  auto data_flip = bytes;
  data_flip[bytes.size() - 100] ^= 0x10;
  expect_error([&] { parse_checkpoint(data_flip, "flip"); }, {"corrupt", "checksum mismatch"});
}

TEST(Checkpoint, RefusesInconsistentContents) {
  const ModelConfig cfg = tiny_config();
  const uint64_t total = make_param_layout(cfg).total;
  const std::vector<float> params = testing::random_floats(total, 4);
  std::vector<float> three = params;
  three.insert(three.end(), params.begin(), params.end());
  three.insert(three.end(), params.begin(), params.end());

  // Itself consistent: the crafting helper follows the documented format.
  EXPECT_NO_THROW(parse_checkpoint(craft(header_for(cfg, {{"params", total}}), params), "ok"));

  std::vector<float> fewer(params.begin(), params.end() - 1);
  expect_error([&] { parse_checkpoint(craft(header_for(cfg, {{"params", total - 1}}), fewer), "x"); },
               {"holds " + std::to_string(total - 1) + " parameters", std::to_string(total)});
  std::vector<float> two = params;
  two.insert(two.end(), params.begin(), params.end());
  expect_error(
      [&] { parse_checkpoint(craft(header_for(cfg, {{"params", total}, {"adam_m", total}}), two), "x"); },
      {"optimizer state m without v"});
  std::vector<float> short_v = three;
  short_v.pop_back();
  expect_error(
      [&] {
        parse_checkpoint(
            craft(header_for(cfg, {{"params", total}, {"adam_m", total}, {"adam_v", total - 1}}),
                  short_v),
            "x");
      },
      {"optimizer state of"});

  json bad_model = header_for(cfg, {{"params", total}});
  bad_model["model"]["n_local"] = {5, 5};
  expect_error([&] { parse_checkpoint(craft(bad_model, params), "x"); },
               {"invalid model config", "n_local"});
  json no_table = header_for(cfg, {{"params", total}});
  no_table.erase("tensors");
  expect_error([&] { parse_checkpoint(craft(no_table, params), "x"); },
               {"corrupt", "no tensor table"});
  json odd_name = header_for(cfg, {{"weights", total}});
  expect_error([&] { parse_checkpoint(craft(odd_name, params), "x"); }, {"unknown tensor 'weights'"});
  json gap = header_for(cfg, {{"params", total}});
  gap["tensors"][0]["offset"] = 4;
  expect_error([&] { parse_checkpoint(craft(gap, params), "x"); }, {"does not start where"});
}

TEST(Checkpoint, ExpectingRefusesAnotherConfigAndNamesTheFields) {
  ScratchDir dir;
  const ModelConfig cfg = tiny_config({1, 2}, 3);
  save_checkpoint(dir.file("d.ckpt"), random_checkpoint(cfg, 5, true));
  EXPECT_NO_THROW(load_checkpoint_expecting(dir.file("d.ckpt"), cfg));
  ModelConfig other = tiny_config({2, 2}, 5);
  expect_error([&] { load_checkpoint_expecting(dir.file("d.ckpt"), other); },
               {"different model config", "n_local (checkpoint [1,2] vs expected [2,2])",
                "window (checkpoint 3 vs expected 5)"});
  other = cfg;
  other.span = SpanConfig::parse("q:cross:2:1");
  expect_error([&] { load_checkpoint_expecting(dir.file("d.ckpt"), other); },
               {"span (checkpoint off vs expected"});
  other = cfg;
  other.d_model = 16;
  expect_error([&] { load_checkpoint_expecting(dir.file("d.ckpt"), other); }, {"d_model"});
}

}  // namespace test_checkpoint
}  // namespace
}  // namespace lsgpt
