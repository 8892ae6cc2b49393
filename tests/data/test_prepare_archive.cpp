// `prepare` over tar.xz archives (the bundled Project Gutenberg books): each
// regular file is one document, the ids equal those of encoding each book
// whole, damaged archives publish nothing, and the bundled archives are the
// ones data/ATTRIBUTION.md lists.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data_test_support.h"
#include "io/tar_archive.h"

namespace lsgpt {
namespace {
namespace test_prepare_archive {

using data_testing::gpt2;
using data_testing::read_file;
using data_testing::ScratchDir;
using data_testing::write_file;
using Ids = std::vector<int32_t>;
namespace fs = std::filesystem;

Ids read_tokens(const std::string& path) {
  const TokenFile file(path, gpt2().vocab_size());
  Ids ids(file.size());
  file.read(0, ids.size(), ids.data());
  return ids;
}

// Prose-like random text: words of mixed scripts, punctuation, paragraphs.
std::string random_book(std::mt19937_64& rng, size_t words) {
  static const std::vector<std::string> pieces = {
      "the", "Whale", "ship", "said", "Ahab", "naïve", "Straße", "日本", "—", "“quoted”",
      "it's", "1851", "  ", ",", ".", "?!", "\t", "ÿ", "emoji 🐋", "d'Artagnan"};
  std::string text;
  for (size_t i = 0; i < words; ++i) {
    text += pieces[rng() % pieces.size()];
    const uint64_t r = rng() % 20;
    text += r == 0 ? "\n\n" : r == 1 ? "\n" : " ";
  }
  return text;
}

int shell(const std::string& cmd) { return std::system(cmd.c_str()); }

struct Books {
  std::vector<std::string> texts;  // non-empty ones, in archive order
  std::string archive;
};

// Writes `n` random books (and an empty file and a nested directory, which
// make no document) under dir/train/ and packs them with tar -cJ, sorted by
// name so the archive order is known.
Books make_archive(const ScratchDir& dir, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const fs::path root = dir.file("books") + std::to_string(seed);
  fs::create_directories(root / "train" / "nested");
  Books books;
  for (int i = 0; i < n; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%04d_book.txt", i);
    books.texts.push_back(random_book(rng, 50 + rng() % 3000));
    write_file((root / "train" / name).string(), books.texts.back());
  }
  write_file((root / "train" / "9999_empty.txt").string(), "");
  books.archive = dir.file("train" + std::to_string(seed) + ".tar.xz");
  EXPECT_EQ(shell("tar --sort=name -C '" + root.string() + "' -cJf '" + books.archive +
                  "' train"),
            0);
  return books;
}

Ids join_books(const std::vector<std::string>& texts) {
  Ids ids;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (i > 0) ids.push_back(Tokenizer::eot);
    const Ids d = gpt2().encode(texts[i]);
    ids.insert(ids.end(), d.begin(), d.end());
  }
  return ids;
}

TEST(PrepareArchive, OneDocumentPerBookWithTheIdsOfEachBookWhole) {
  ScratchDir dir;
  const Books train = make_archive(dir, 9, 11), valid = make_archive(dir, 2, 12);
  PrepareOptions options;
  options.round_bytes = 4000;  // several rounds, several books per round
  const std::vector<ArchiveSplit> splits = {{train.archive, dir.file("train.bin")},
                                            {valid.archive, dir.file("valid.bin")}};
  for (const int threads : {1, 2}) {
    omp_set_num_threads(threads);
    const std::vector<PrepareSummary> s = prepare_archives(gpt2(), splits, options);
    ASSERT_EQ(s.size(), 2u);
    EXPECT_EQ(s[0].documents, 9u);
    EXPECT_EQ(s[1].documents, 2u);
    EXPECT_EQ(read_tokens(dir.file("train.bin")), join_books(train.texts)) << threads;
    EXPECT_EQ(read_tokens(dir.file("valid.bin")), join_books(valid.texts)) << threads;
    uint64_t bytes = 0;
    for (const auto& t : train.texts) bytes += t.size();
    EXPECT_EQ(s[0].input_bytes, bytes);
    EXPECT_EQ(s[0].tokens, join_books(train.texts).size());
  }
}

TEST(PrepareArchive, DamagedArchivePublishesNothing) {
  ScratchDir dir;
  const Books good = make_archive(dir, 3, 21), bad = make_archive(dir, 3, 22);
  const std::string bytes = read_file(bad.archive);
  const std::string truncated = dir.file("truncated.tar.xz"), garbage = dir.file("garbage.tar.xz");
  write_file(truncated, bytes.substr(0, bytes.size() * 2 / 3));
  std::string flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x5A;
  const std::string corrupt = dir.file("corrupt.tar.xz");
  write_file(corrupt, flipped);
  std::mt19937_64 rng(23);
  std::string noise(5000, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  write_file(garbage, noise);
  for (const std::string& broken : {truncated, corrupt, garbage, dir.file("missing.tar.xz")}) {
    const std::vector<ArchiveSplit> splits = {{good.archive, dir.file("a.bin")},
                                              {broken, dir.file("b.bin")}};
    try {
      prepare_archives(gpt2(), splits, PrepareOptions{});
      ADD_FAILURE() << "accepted " << broken;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(broken), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir.file("a.bin"))) << broken;
    EXPECT_FALSE(fs::exists(dir.file("b.bin"))) << broken;
    for (const auto& name : dir.entries()) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  }
}

TEST(PrepareArchive, ArchiveWithoutTextIsRefused) {
  ScratchDir dir;
  fs::create_directories(dir.file("empty/train"));
  write_file(dir.file("empty/train/a.txt"), "");
  ASSERT_EQ(shell("tar -C '" + dir.file("empty") + "' -cJf '" + dir.file("e.tar.xz") + "' train"), 0);
  EXPECT_THROW(prepare_archives(gpt2(), {{dir.file("e.tar.xz"), dir.file("e.bin")}}, {}), Error);
  EXPECT_FALSE(fs::exists(dir.file("e.bin")));
}

// The CLI's pg-books form refuses what does not apply before reading anything.
TEST(PrepareArchive, CliDatasetArgumentsAreChecked) {
  ScratchDir dir;
  auto r = data_testing::run_lsgpt(dir, "prepare --dataset pg-books --split file --out-dir '" +
                                            dir.file("out") + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lsgpt: error: prepare: --split does not apply to --dataset"),
            std::string::npos) << r.err;
  r = data_testing::run_lsgpt(dir, "prepare --dataset pg-books");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--dataset needs --out-dir"), std::string::npos) << r.err;
  r = data_testing::run_lsgpt(dir, "prepare --dataset books --out-dir x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_FALSE(fs::exists(dir.file("out")));
  r = data_testing::run_lsgpt(dir, "prepare --help");
  EXPECT_NE(r.out.find("pg-books"), std::string::npos);
}

std::string sha256(const std::string& path) {
  std::FILE* pipe = ::popen(("sha256sum '" + path + "'").c_str(), "r");
  if (!pipe) return "";
  char hex[65] = {};
  const size_t n = std::fread(hex, 1, 64, pipe);
  ::pclose(pipe);
  return std::string(hex, n);
}

// Cheap: hashes the 35 MB of archives and lists the two small ones; the
// 120 MB of training text is never tokenized here.
TEST(PrepareArchive, BundledBooksAreTheAttributedOnes) {
  const std::string dir = bundled_pg_books_dir();
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"train.tar.xz", "456f4b3c4ccac28c8dfcd9c7ebcfe93e2c0fd90e6731c22c31d923ee109a02c7"},
      {"valid.tar.xz", "bb8b5cfd5e9ad0f891c96e7108004e093db0e33687767bcec7a7a664dc589aec"},
      {"test.tar.xz", "6feccf037c0a9facd338048df8bb8aa0a24b86f2bb2fd29d9332685d6363f11b"},
      {"MANIFEST.tsv", "7a8544836f3f731bf623a30e255dc3d5ab10e32f1e1f5c485d56700700ea2643"}};
  for (const auto& [name, hash] : expected) {
    ASSERT_TRUE(fs::exists(dir + "/" + name)) << name;
    EXPECT_EQ(sha256(dir + "/" + name), hash) << name;
  }
  std::ifstream manifest(dir + "/MANIFEST.tsv");
  std::map<std::string, std::vector<std::string>> files;  // split -> file names
  std::string line;
  std::getline(manifest, line);  // header
  while (std::getline(manifest, line))
    files[line.substr(0, line.find('\t'))].push_back(
        line.substr(line.find('\t') + 1, line.find('\t', line.find('\t') + 1) - line.find('\t') - 1));
  EXPECT_EQ(files["train"].size(), 311u);
  for (const char* split : {"valid", "test"}) {
    ASSERT_EQ(files[split].size(), 14u) << split;
    TarArchiveReader reader(dir + "/" + split + ".tar.xz");
    std::string name, text;
    size_t i = 0;
    for (; reader.next_file(name, text); ++i) {
      ASSERT_LT(i, files[split].size());
      EXPECT_EQ(name, std::string(split) + "/" + files[split][i]);
      EXPECT_FALSE(text.empty());
    }
    EXPECT_EQ(i, files[split].size());
  }
}

}  // namespace test_prepare_archive
}  // namespace
}  // namespace lsgpt
