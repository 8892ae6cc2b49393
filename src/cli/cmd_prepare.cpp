// `lsgpt prepare`: text files -> a token file (src/data/prepare.h does the
// work), or a bundled dataset (WikiText-2, the Project Gutenberg books) ->
// DIR/{train,valid,test}.bin.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"

namespace lsgpt::cli {

namespace {

struct PrepareCommandOptions {
  std::vector<std::string> inputs;
  std::string output;
  std::string split;
  std::string dataset;
  std::string out_dir;
  std::string tokenizer_dir = Tokenizer::default_dir();
  bool eot_as_text = false;
};

void report(const PrepareSummary& s, const std::string& output) {
  std::fprintf(stderr, "%s\n", describe(s, "prepare: wrote " + output).c_str());
  if (s.literal_eot > 0)
    std::fprintf(stderr, "prepare: --eot-as-text keeps a literal <|endoftext|> as plain text\n");
}

// One document per book; nothing is published unless all three archives read
// cleanly.
void prepare_pg_books(const Tokenizer& tokenizer, const std::string& out_dir,
                      PrepareOptions options) {
  options.round_lines = !options.live_progress;
  std::vector<ArchiveSplit> splits;
  for (const char* part : {"train", "valid", "test"})
    splits.push_back({bundled_pg_books_dir() + "/" + part + ".tar.xz", out_dir + "/" + part + ".bin"});
  const std::vector<PrepareSummary> done = prepare_archives(tokenizer, splits, options);
  for (size_t i = 0; i < splits.size(); ++i) report(done[i], splits[i].output);
}

void run_prepare(const PrepareCommandOptions& o) {
  PrepareOptions options;
  options.live_progress = ::isatty(STDERR_FILENO) != 0;
  options.file_summaries = o.inputs.size() > 1;
  options.eot_as_text = o.eot_as_text;

  if (!o.dataset.empty()) {
    if (!o.inputs.empty() || !o.output.empty())
      fail("prepare: give either input files with -o, or --dataset with --out-dir, not both");
    if (!o.split.empty())
      fail("prepare: --split does not apply to --dataset (WikiText-2 is split at headings, "
           "pg-books into books)");
    if (o.out_dir.empty()) fail("prepare: --dataset needs --out-dir DIR");
    std::error_code ec;
    std::filesystem::create_directories(o.out_dir, ec);
    if (ec) fail("cannot create output directory ", o.out_dir, ": ", ec.message());
    const Tokenizer tokenizer = Tokenizer::load(o.tokenizer_dir);
    if (o.dataset == "pg-books") {
      prepare_pg_books(tokenizer, o.out_dir, options);
      return;
    }
    options.split = DocumentSplit::wikitext_headings;
    for (const char* part : {"train", "valid", "test"}) {
      const std::string input = bundled_wikitext2_dir() + "/wiki." + part + ".tokens";
      const std::string output = o.out_dir + "/" + part + ".bin";
      report(prepare_token_file(tokenizer, {input}, output, options), output);
    }
    return;
  }

  if (!o.out_dir.empty()) fail("prepare: --out-dir goes with --dataset; for input files use -o");
  if (o.inputs.empty())
    fail("prepare: give input files and -o OUT.bin, or --dataset wikitext2|pg-books --out-dir "
         "DIR");
  if (o.output.empty()) fail("prepare: give the output token file with -o OUT.bin");
  refuse_output_over_inputs("prepare: the output", o.output, o.inputs);
  options.split = parse_document_split(o.split.empty() ? "file" : o.split);
  const Tokenizer tokenizer = Tokenizer::load(o.tokenizer_dir);
  report(prepare_token_file(tokenizer, o.inputs, o.output, options), o.output);
}

}  // namespace

void add_prepare_command(CLI::App& app) {
  auto o = std::make_shared<PrepareCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "prepare",
      "Tokenize text files into one token file (documents separated by <|endoftext|>), "
      "or prepare a bundled dataset with --dataset wikitext2|pg-books --out-dir DIR. "
      "A literal <|endoftext|> in the text is that same token, so it also separates "
      "documents (and is counted as doing so) unless --eot-as-text is given");
  cmd->add_option("inputs", o->inputs, "Text files to tokenize, in order");
  cmd->add_option("-o,--output", o->output, "Token file to write (written atomically)");
  cmd->add_option("--split", o->split,
                  "What is a document: file (each input file; the default), wikitext (also a "
                  "new document at each ' = Title = ' line) or blank-line (documents separated "
                  "by blank lines)")
      ->check(CLI::IsMember({"file", "wikitext", "blank-line"}));
  cmd->add_option("--dataset", o->dataset,
                  "A bundled dataset to prepare: wikitext2 (WikiText-2, a document per article) "
                  "or pg-books (339 Project Gutenberg books, 130 MB of text, one document per "
                  "book, read straight from data/pg-books/*.tar.xz and tokenized in parallel; "
                  "valid and test are books by authors absent from train). For long books, "
                  "train with --sampler documents so windows stay inside one book")
      ->check(CLI::IsMember({"wikitext2", "pg-books"}));
  cmd->add_option("--out-dir", o->out_dir,
                  "With --dataset: directory for train.bin, valid.bin and test.bin");
  cmd->add_flag("--eot-as-text", o->eot_as_text,
                "Encode a literal <|endoftext|> in the input as ordinary text (BPE pieces), "
                "not as the document separator");
  cmd->add_option("--tokenizer-dir", o->tokenizer_dir, "Directory with encoder.json and vocab.bpe")
      ->capture_default_str();
  cmd->callback([o] { run_prepare(*o); });
}

}  // namespace lsgpt::cli
