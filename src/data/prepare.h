// Text files -> one token file, streaming: inputs are read in chunks and
// encoded with StreamingEncoder, so the ids equal those of encoding each
// document whole while memory stays bounded by the chunk size. Documents are
// separated by <|endoftext|> (Tokenizer::eot); what counts as a document is
// the DocumentSplit. A literal "<|endoftext|>" inside the text encodes to the
// same id, so it separates documents too, and is counted as doing so, unless
// PrepareOptions::eot_as_text keeps it as plain text. Used by `lsgpt prepare`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace lsgpt {

enum class DocumentSplit {
  whole_file,         // "file": each input file is one document
  wikitext_headings,  // "wikitext": also a new document at each " = Title = " line
  blank_lines,        // "blank-line": documents are separated by blank lines (dropped)
};

// "file", "wikitext" or "blank-line"; anything else is an lsgpt::Error.
DocumentSplit parse_document_split(std::string_view name);

// A WikiText top-level heading line: " = Title = " with exactly one '=' on
// each side (second-level headings are " = = Title = = "). The line may end
// with its newline.
bool is_wikitext_heading(std::string_view line);

struct PrepareOptions {
  DocumentSplit split = DocumentSplit::whole_file;
  size_t chunk_bytes = size_t(1) << 20;
  bool live_progress = false;   // redraw a progress line on stderr (for terminals)
  bool file_summaries = false;  // one stderr line per input file
  bool eot_as_text = false;     // a literal "<|endoftext|>" is BPE text, not a separator
  // Archives: books are read in rounds of about this many bytes and each
  // round is tokenized in parallel, one book per thread at a time.
  size_t round_bytes = size_t(32) << 20;
  bool round_lines = false;  // a stderr line per round when not live_progress (logs)
};

struct PrepareSummary {
  uint64_t input_bytes = 0;
  uint64_t tokens = 0;
  // Runs of tokens between <|endoftext|> ids in the file, whichever put them
  // there: the split, or a literal "<|endoftext|>" in the text.
  uint64_t documents = 0;
  uint64_t literal_eot = 0;  // <|endoftext|> ids that came from the text itself
  double seconds = 0;
};

// Writes `output` atomically; refuses missing, unreadable or empty inputs and
// an input list that yields no text.
PrepareSummary prepare_token_file(const Tokenizer& tokenizer,
                                  const std::vector<std::string>& inputs, const std::string& output,
                                  const PrepareOptions& options);

// An archive (tar.xz, read by io/tar_archive.h) whose every regular file is
// one document, in stored order, and the token file it becomes.
struct ArchiveSplit {
  std::string archive;
  std::string output;
};

// Tokenizes every archive, then publishes every output: a damaged archive
// fails before any output appears, so no split is left from an earlier run
// mixed with new ones. The ids equal those of encoding each file's text whole
// and joining the files with <|endoftext|>. Files are tokenized in parallel
// (OpenMP, one file per thread); the output does not depend on the thread
// count. Refuses an archive with no text.
std::vector<PrepareSummary> prepare_archives(const Tokenizer& tokenizer,
                                             const std::vector<ArchiveSplit>& splits,
                                             const PrepareOptions& options);

// The Project Gutenberg books bundled in the repository
// ({train,valid,test}.tar.xz, see data/ATTRIBUTION.md).
std::string bundled_pg_books_dir();

// The WikiText-2 files bundled in the repository (wiki.{train,valid,test}.tokens).
std::string bundled_wikitext2_dir();

// One line for stderr: "<what>: N tokens in D documents from X MB in S s (R MB/s)",
// saying how many separators were a literal <|endoftext|> in the text when any were.
std::string describe(const PrepareSummary& summary, const std::string& what);

}  // namespace lsgpt
