// `prepare` as a library: streaming in tiny chunks gives exactly the ids of
// encoding each document whole, documents are cut as each split says and
// separated by <|endoftext|>, and bad inputs leave no output behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "data_test_support.h"

namespace lsgpt {
namespace {
namespace test_prepare {

using data_testing::gpt2;
using data_testing::read_file;
using data_testing::ScratchDir;
using data_testing::write_file;
using Ids = std::vector<int32_t>;

Ids read_tokens(const std::string& path) {
  const TokenFile file(path, gpt2().vocab_size());
  Ids ids(file.size());
  file.read(0, ids.size(), ids.data());
  return ids;
}

// Encodes each document whole and joins them with <|endoftext|>.
Ids join_documents(const std::vector<std::string>& docs) {
  Ids ids;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > 0) ids.push_back(Tokenizer::eot);
    const Ids d = gpt2().encode(docs[i]);
    ids.insert(ids.end(), d.begin(), d.end());
  }
  return ids;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t nl = text.find('\n', start);
    const size_t end = nl == std::string::npos ? text.size() : nl + 1;
    lines.push_back(text.substr(start, end - start));
    start = end;
  }
  return lines;
}

PrepareOptions with(DocumentSplit split, size_t chunk) {
  PrepareOptions o;
  o.split = split;
  o.chunk_bytes = chunk;
  return o;
}

TEST(Prepare, WikiTextHeadings) {
  EXPECT_TRUE(is_wikitext_heading(" = Valkyria Chronicles III = \n"));
  EXPECT_TRUE(is_wikitext_heading(" = A = "));
  EXPECT_TRUE(is_wikitext_heading("= Robert Boulter =\r\n"));
  EXPECT_FALSE(is_wikitext_heading(" = = Gameplay = = \n"));
  EXPECT_FALSE(is_wikitext_heading(" = = = Plot = = = \n"));
  EXPECT_FALSE(is_wikitext_heading(" The = sign = \n"));
  EXPECT_FALSE(is_wikitext_heading(" = \n"));
  EXPECT_FALSE(is_wikitext_heading(" \n"));
}

TEST(Prepare, DocumentSplitNames) {
  EXPECT_EQ(parse_document_split("file"), DocumentSplit::whole_file);
  EXPECT_EQ(parse_document_split("wikitext"), DocumentSplit::wikitext_headings);
  EXPECT_EQ(parse_document_split("blank-line"), DocumentSplit::blank_lines);
  EXPECT_THROW(parse_document_split("paragraph"), Error);
}

TEST(Prepare, StreamingEqualsWholeDocumentsOnWikiText) {
  // A slice of WikiText-2 valid with several articles: documents start at
  // each top-level heading; blank lines before the first stay with it.
  const std::string text = read_file(data_testing::wikitext2("valid")).substr(0, 400000);
  std::vector<std::string> docs(1);
  for (const auto& line : lines_of(text)) {
    const bool blank = line.find_first_not_of(" \n") == std::string::npos;
    if (is_wikitext_heading(line) && docs.back().find_first_not_of(" \n") != std::string::npos)
      docs.emplace_back();
    docs.back() += line;
    (void)blank;
  }
  ASSERT_GE(docs.size(), 3u);
  const Ids expected = join_documents(docs);

  ScratchDir dir;
  write_file(dir.file("in.txt"), text);
  for (const size_t chunk : {size_t(1) << 20, size_t(4096), size_t(61)}) {
    const std::string out = dir.file("out" + std::to_string(chunk) + ".bin");
    const PrepareSummary s = prepare_token_file(gpt2(), {dir.file("in.txt")}, out,
                                                with(DocumentSplit::wikitext_headings, chunk));
    EXPECT_EQ(read_tokens(out), expected) << "chunk " << chunk;
    EXPECT_EQ(s.documents, docs.size());
    EXPECT_EQ(s.tokens, expected.size());
    EXPECT_EQ(s.input_bytes, text.size());
  }
  // Decoding gives back the text with an <|endoftext|> before each article.
  std::string joined;
  for (size_t i = 0; i < docs.size(); ++i) joined += (i ? "<|endoftext|>" : "") + docs[i];
  EXPECT_TRUE(gpt2().decode(expected) == joined);
}

TEST(Prepare, TinyChunksOnAwkwardText) {
  // Whitespace runs, CJK without spaces, invalid UTF-8 and a long line with
  // no cut at all, crossed by chunks of a few bytes.
  std::string text = "first   line\n\n\n\t\tsecond \xe3\x80\x80 line \xff\xfe\xe3\x81\n";
  text += std::string(3000, '=') + "\n";
  for (int i = 0; i < 50; ++i) text += "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e";
  text += "\n  trailing   \n";
  ScratchDir dir;
  write_file(dir.file("a.txt"), text);
  write_file(dir.file("b.txt"), "second file it's\n");
  for (const size_t chunk : {1u, 2u, 3u, 5u, 64u}) {
    const std::string out = dir.file("o.bin");
    prepare_token_file(gpt2(), {dir.file("a.txt"), dir.file("b.txt")}, out,
                       with(DocumentSplit::whole_file, chunk));
    EXPECT_EQ(read_tokens(out), join_documents({text, "second file it's\n"})) << chunk;
  }
}

TEST(Prepare, BlankLineDocuments) {
  ScratchDir dir;
  write_file(dir.file("docs.txt"),
             "\n\nOne story.\nStill one.\n\n \t\nTwo.\n\n\n\nThree, at the end");
  write_file(dir.file("more.txt"), "Four.\n\n");
  for (const size_t chunk : {1u, 7u, 1024u}) {
    prepare_token_file(gpt2(), {dir.file("docs.txt"), dir.file("more.txt")}, dir.file("o.bin"),
                       with(DocumentSplit::blank_lines, chunk));
    EXPECT_EQ(read_tokens(dir.file("o.bin")), join_documents({"One story.\nStill one.\n", "Two.\n",
                                                              "Three, at the end", "Four.\n"}))
        << chunk;
  }
}

TEST(Prepare, LongLinesAreNotHeadings) {
  // A line longer than 64 KiB is passed on in pieces; its tail must not be
  // taken for a heading even if it looks like one. With 16-byte chunks the
  // first piece handed on is the line's first 65539 bytes (read by chunk
  // 4097, after the 13-byte first line), so the rest starts exactly at
  // " = Not A Heading = ".
  ScratchDir dir;
  const std::string long_line = std::string(65539, 'x') + " = Not A Heading = \n";
  const std::string text = " intro text \n" + long_line + " more \n = Real Heading = \n body \n";
  write_file(dir.file("w.txt"), text);
  for (const size_t chunk : {size_t(16), size_t(65536)}) {
    prepare_token_file(gpt2(), {dir.file("w.txt")}, dir.file("o.bin"),
                       with(DocumentSplit::wikitext_headings, chunk));
    EXPECT_EQ(
        read_tokens(dir.file("o.bin")),
        join_documents({" intro text \n" + long_line + " more \n", " = Real Heading = \n body \n"}))
        << chunk;
  }
}

// A literal "<|endoftext|>" in the text is the separator token, so it starts
// a new document, and the count must say so (it used to count input files).
TEST(Prepare, LiteralEndOfTextSeparatesDocumentsAndIsCounted) {
  ScratchDir dir;
  write_file(dir.file("a.txt"), "First story.<|endoftext|>Second story.\n");
  write_file(dir.file("b.txt"), "<|endoftext|>Third.<|endoftext|>");
  for (const size_t chunk : {size_t(1), size_t(5), size_t(1) << 20}) {
    const PrepareSummary s = prepare_token_file(gpt2(), {dir.file("a.txt"), dir.file("b.txt")},
                                                dir.file("o.bin"),
                                                with(DocumentSplit::whole_file, chunk));
    // Empty documents stand for the separators that meet (the one between
    // the files and the literal one opening b.txt) and the one at the end.
    EXPECT_EQ(read_tokens(dir.file("o.bin")),
              join_documents({"First story.", "Second story.\n", "", "Third.", ""}))
        << chunk;
    EXPECT_EQ(s.documents, 3u) << chunk;
    EXPECT_EQ(s.literal_eot, 3u) << chunk;
    EXPECT_NE(describe(s, "x").find(" in 3 documents"), std::string::npos) << describe(s, "x");
    EXPECT_NE(describe(s, "x").find("3 of the <|endoftext|> separators"), std::string::npos)
        << describe(s, "x");
  }
}

TEST(Prepare, EotAsTextKeepsALiteralEndOfTextAsPlainText) {
  ScratchDir dir;
  const std::string a = "Code: if (t == \"<|endoftext|>\") stop();\n", b = "<|endoftext|>";
  write_file(dir.file("a.txt"), a);
  write_file(dir.file("b.txt"), b);
  const Ids plain_a = gpt2().encode(a, /*eot_as_text=*/true);
  EXPECT_EQ(std::count(plain_a.begin(), plain_a.end(), Tokenizer::eot), 0);
  EXPECT_EQ(gpt2().decode(plain_a), a);
  for (const size_t chunk : {size_t(1), size_t(1) << 20}) {
    PrepareOptions options = with(DocumentSplit::whole_file, chunk);
    options.eot_as_text = true;
    const PrepareSummary s = prepare_token_file(gpt2(), {dir.file("a.txt"), dir.file("b.txt")},
                                                dir.file("o.bin"), options);
    Ids expected = plain_a;
    expected.push_back(Tokenizer::eot);  // the one separator: between the files
    const Ids plain_b = gpt2().encode(b, true);
    expected.insert(expected.end(), plain_b.begin(), plain_b.end());
    EXPECT_EQ(read_tokens(dir.file("o.bin")), expected) << chunk;
    EXPECT_EQ(s.documents, 2u);
    EXPECT_EQ(s.literal_eot, 0u);
    EXPECT_EQ(describe(s, "x").find("separators were"), std::string::npos) << describe(s, "x");
  }
}

TEST(Prepare, RefusesBadInputsAndLeavesNoOutput) {
  ScratchDir dir;
  write_file(dir.file("ok.txt"), "some text\n");
  write_file(dir.file("empty.txt"), "");
  write_file(dir.file("blank.txt"), "\n\n  \n");
  const std::string out = dir.file("out.bin");
  const auto expect_error = [&](const std::vector<std::string>& inputs, DocumentSplit split,
                                const std::string& words) {
    try {
      prepare_token_file(gpt2(), inputs, out, with(split, 1 << 20));
      ADD_FAILURE() << "no error; expected \"" << words << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  expect_error({dir.file("ok.txt"), dir.file("empty.txt")}, DocumentSplit::whole_file,
               "empty.txt is empty");
  expect_error({dir.file("ok.txt"), dir.file("nope.txt")}, DocumentSplit::whole_file,
               "cannot open input file");
  expect_error({dir.file("")}, DocumentSplit::whole_file, "not a regular file");
  expect_error({}, DocumentSplit::whole_file, "no input files");
  expect_error({dir.file("blank.txt")}, DocumentSplit::blank_lines, "no text");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"blank.txt", "empty.txt", "ok.txt"}));
}

TEST(Prepare, BundledWikiText2ValidSplit) {
  ScratchDir dir;
  const std::string out = dir.file("valid.bin");
  const PrepareSummary s =
      prepare_token_file(gpt2(), {bundled_wikitext2_dir() + "/wiki.valid.tokens"}, out,
                         with(DocumentSplit::wikitext_headings, size_t(1) << 20));
  // 258659 tokens of text (tests/tokenizer) plus one <|endoftext|> between
  // each pair of its 60 articles.
  EXPECT_EQ(s.documents, 60u);
  EXPECT_EQ(s.tokens, 258659u + 59u);
  const Ids ids = read_tokens(out);
  Ids text_ids;
  for (const int32_t id : ids)
    if (id != Tokenizer::eot) text_ids.push_back(id);
  EXPECT_EQ(data_testing::fnv1a(text_ids), 0x401eab52e6652dd1ull);
  EXPECT_NE(describe(s, "x").find("258718 tokens in 60 documents"), std::string::npos)
      << describe(s, "x");
}

}  // namespace test_prepare
}  // namespace
}  // namespace lsgpt
