// Streaming `prepare`. Chunks go through a line splitter only when the
// document split looks at lines (WikiText headings, blank lines); a line
// longer than longest_line_held is passed on in pieces and is then never taken
// for a heading or a blank line, so one huge line cannot make us hold a whole
// file.
#include "data/prepare.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>

#include "core/error.h"
#include "data/token_file.h"
#include "io/tar_archive.h"
#include "tokenizer/streaming_encoder.h"

namespace lsgpt {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t longest_line_held = 64 * 1024;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

bool is_blank(std::string_view line) {
  for (const char c : line)
    if (!(c == ' ' || (c >= '\t' && c <= '\r'))) return false;
  return true;
}

// Turns a stream of document texts into tokens in the writer, with an
// <|endoftext|> between documents (never before the first or after the last).
// Documents are counted in the ids written, not in the texts fed in, because
// a literal "<|endoftext|>" in a text separates documents just the same.
class DocumentEncoder {
 public:
  DocumentEncoder(const Tokenizer& tokenizer, TokenFileWriter& writer, bool eot_as_text)
      : encoder_(tokenizer, eot_as_text), writer_(writer) {}

  void text(std::string_view bytes) {
    if (bytes.empty()) return;
    if (!in_document_) {
      in_document_ = true;
      if (started_) {
        ids_.push_back(Tokenizer::eot);
        ++inserted_eot_;
      }
      started_ = true;
    }
    encoder_.write(bytes, ids_);
    flush();
  }
  // A whole document already encoded (empty: none).
  void encoded_document(const std::vector<int32_t>& ids) {
    if (ids.empty()) return;
    end_document();
    if (started_) {
      ids_.push_back(Tokenizer::eot);
      ++inserted_eot_;
    }
    started_ = true;
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    flush();
  }
  void end_document() {
    if (!in_document_) return;
    encoder_.finish(ids_);
    flush();
    in_document_ = false;
  }
  uint64_t documents() const { return documents_; }
  uint64_t literal_eot() const { return eot_ids_ - inserted_eot_; }

 private:
  void flush() {
    for (const int32_t id : ids_) {
      if (id == Tokenizer::eot) {
        ++eot_ids_;
        in_run_ = false;
      } else if (!in_run_) {
        in_run_ = true;
        ++documents_;
      }
    }
    writer_.append(ids_);
    ids_.clear();
  }
  StreamingEncoder encoder_;
  TokenFileWriter& writer_;
  std::vector<int32_t> ids_;
  bool in_document_ = false, started_ = false;
  bool in_run_ = false;  // the last id written was not <|endoftext|>
  uint64_t documents_ = 0, eot_ids_ = 0, inserted_eot_ = 0;
};

// Feeds one input file's bytes to the DocumentEncoder, cutting documents as
// the split asks.
class SplitFeeder {
 public:
  SplitFeeder(DocumentEncoder& docs, DocumentSplit split) : docs_(docs), split_(split) {}

  void bytes(std::string_view chunk) {
    if (split_ == DocumentSplit::whole_file) {
      docs_.text(chunk);
      return;
    }
    carry_.append(chunk);
    size_t start = 0;
    for (size_t nl; (nl = carry_.find('\n', start)) != std::string::npos; start = nl + 1) {
      line(std::string_view(carry_).substr(start, nl + 1 - start), continues_);
      continues_ = false;
    }
    carry_.erase(0, start);
    if (carry_.size() > longest_line_held) {
      line(carry_, continues_);
      continues_ = true;
      carry_.clear();
    }
  }
  void end_of_file() {
    if (!carry_.empty()) line(carry_, continues_);
    carry_.clear();
    continues_ = false;
    has_content_ = false;
    docs_.end_document();
  }

 private:
  // `continued`: this is the rest of a line whose start was already passed on.
  void line(std::string_view text, bool continued) {
    if (split_ == DocumentSplit::wikitext_headings) {
      // Blank lines before the first heading stay with it rather than making
      // a document of their own.
      if (!continued && has_content_ && is_wikitext_heading(text)) {
        docs_.end_document();
        has_content_ = false;
      }
      docs_.text(text);
      has_content_ = has_content_ || continued || !is_blank(text);
      return;
    }
    if (!continued && is_blank(text)) {
      docs_.end_document();
      return;
    }
    docs_.text(text);
  }

  DocumentEncoder& docs_;
  DocumentSplit split_;
  std::string carry_;
  bool continues_ = false;
  bool has_content_ = false;  // the current document has a non-blank line
};

std::string megabytes(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

struct Book {
  std::string name, text;
  std::vector<int32_t> ids;
};

// Reads books until about `round_bytes` are held (at least one book); empty
// when the archive has ended.
std::vector<Book> read_round(TarArchiveReader& reader, size_t round_bytes) {
  std::vector<Book> books;
  size_t held = 0;
  Book book;
  while (held < round_bytes && reader.next_file(book.name, book.text)) {
    held += book.text.size();
    books.push_back(std::move(book));
    book = Book{};
  }
  return books;
}

// Encodes each book whole, in parallel. An exception cannot leave an OpenMP
// region, so the first one is carried out and rethrown.
void encode_round(const Tokenizer& tokenizer, std::vector<Book>& books, bool eot_as_text) {
  std::exception_ptr error;
  const long n = static_cast<long>(books.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (long i = 0; i < n; ++i) {
    try {
      tokenizer.encode_append(books[i].text, books[i].ids, eot_as_text);
      std::string().swap(books[i].text);
    } catch (...) {
#pragma omp critical(lsgpt_prepare_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void draw_round(const PrepareOptions& options, const std::string& archive, uint64_t books,
                const PrepareSummary& s, uint64_t tokens, Clock::time_point start) {
  if (!options.live_progress && !options.round_lines) return;
  const double t = seconds_since(start);
  std::fprintf(stderr, "%sprepare: %s: %" PRIu64 " books, %s, %" PRIu64 " tokens, %.1f MB/s%s",
               options.live_progress ? "\r" : "", archive.c_str(), books,
               megabytes(s.input_bytes).c_str(), tokens,
               t > 0 ? static_cast<double>(s.input_bytes) / 1e6 / t : 0.0,
               options.live_progress ? "   " : "\n");
}

PrepareSummary prepare_archive(const Tokenizer& tokenizer, const std::string& archive,
                               TokenFileWriter& writer, const PrepareOptions& options) {
  const auto start = Clock::now();
  PrepareSummary summary;
  TarArchiveReader reader(archive);
  DocumentEncoder docs(tokenizer, writer, options.eot_as_text);
  uint64_t books_done = 0;
  for (std::vector<Book> books; !(books = read_round(reader, options.round_bytes)).empty();) {
    for (const Book& b : books) summary.input_bytes += b.text.size();
    encode_round(tokenizer, books, options.eot_as_text);
    for (const Book& b : books) docs.encoded_document(b.ids);
    books_done += books.size();
    draw_round(options, archive, books_done, summary, writer.token_count(), start);
  }
  if (options.live_progress) std::fprintf(stderr, "\r\033[K");
  if (writer.token_count() == 0) fail("prepare: the archive ", archive, " holds no text");
  summary.tokens = writer.token_count();
  summary.documents = docs.documents();
  summary.literal_eot = docs.literal_eot();
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace

std::vector<PrepareSummary> prepare_archives(const Tokenizer& tokenizer,
                                             const std::vector<ArchiveSplit>& splits,
                                             const PrepareOptions& options) {
  if (splits.empty()) fail("prepare: no archives");
  LSGPT_CHECK(options.round_bytes > 0);
  std::vector<std::unique_ptr<TokenFileWriter>> writers;
  std::vector<PrepareSummary> summaries;
  for (const ArchiveSplit& split : splits) {
    writers.push_back(std::make_unique<TokenFileWriter>(split.output, tokenizer.vocab_size()));
    summaries.push_back(prepare_archive(tokenizer, split.archive, *writers.back(), options));
  }
  for (auto& w : writers) w->commit();
  return summaries;
}

DocumentSplit parse_document_split(std::string_view name) {
  if (name == "file") return DocumentSplit::whole_file;
  if (name == "wikitext") return DocumentSplit::wikitext_headings;
  if (name == "blank-line") return DocumentSplit::blank_lines;
  fail("unknown document split \"", name, "\"; use file, wikitext or blank-line");
}

bool is_wikitext_heading(std::string_view line) {
  const auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!line.empty() && is_space(line.front())) line.remove_prefix(1);
  while (!line.empty() && is_space(line.back())) line.remove_suffix(1);
  const size_t n = line.size();
  return n >= 5 && line[0] == '=' && line[1] == ' ' && line[2] != '=' && line[n - 1] == '=' &&
         line[n - 2] == ' ' && line[n - 3] != '=';
}

std::string bundled_pg_books_dir() { return LSGPT_SOURCE_DIR "/data/pg-books"; }

std::string bundled_wikitext2_dir() { return LSGPT_SOURCE_DIR "/data/wikitext-2"; }

std::string describe(const PrepareSummary& s, const std::string& what) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s: %" PRIu64 " tokens in %" PRIu64 " documents from %s in %.1f s (%.1f MB/s)",
                what.c_str(), s.tokens, s.documents, megabytes(s.input_bytes).c_str(), s.seconds,
                s.seconds > 0 ? static_cast<double>(s.input_bytes) / 1e6 / s.seconds : 0.0);
  std::string line = buf;
  if (s.literal_eot > 0)
    line += "; " + std::to_string(s.literal_eot) +
            " of the <|endoftext|> separators were written as <|endoftext|> in the text";
  return line;
}

PrepareSummary prepare_token_file(const Tokenizer& tokenizer,
                                  const std::vector<std::string>& inputs, const std::string& output,
                                  const PrepareOptions& options) {
  if (inputs.empty()) fail("prepare: no input files");
  LSGPT_CHECK(options.chunk_bytes > 0);
  // Check every input before writing anything.
  std::vector<uint64_t> sizes;
  for (const auto& path : inputs) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      fail("cannot open input file ", path, ": ", std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail("input file ", path, " is not a regular file");
    if (st.st_size == 0) fail("input file ", path, " is empty");
    sizes.push_back(static_cast<uint64_t>(st.st_size));
  }

  const auto start = Clock::now();
  PrepareSummary summary;
  TokenFileWriter writer(output, tokenizer.vocab_size());
  DocumentEncoder docs(tokenizer, writer, options.eot_as_text);
  std::vector<char> chunk(options.chunk_bytes);
  auto last_draw = start;
  for (size_t f = 0; f < inputs.size(); ++f) {
    const auto& path = inputs[f];
    const auto file_start = Clock::now();
    const uint64_t tokens_before = writer.token_count();
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> in(std::fopen(path.c_str(), "rb"),
                                                       &std::fclose);
    if (!in) fail("cannot open input file ", path, ": ", std::strerror(errno));
    SplitFeeder feeder(docs, options.split);
    uint64_t done = 0;
    size_t n = 0;
    while ((n = std::fread(chunk.data(), 1, chunk.size(), in.get())) > 0) {
      feeder.bytes(std::string_view(chunk.data(), n));
      done += n;
      summary.input_bytes += n;
      if (options.live_progress && seconds_since(last_draw) > 0.25) {
        last_draw = Clock::now();
        const double s = seconds_since(start);
        std::fprintf(stderr, "\rprepare: %s %s / %s, %" PRIu64 " tokens, %.1f MB/s   ",
                     path.c_str(), megabytes(done).c_str(), megabytes(sizes[f]).c_str(),
                     writer.token_count(), static_cast<double>(summary.input_bytes) / 1e6 / s);
      }
    }
    if (std::ferror(in.get())) fail("cannot read input file ", path, ": ", std::strerror(errno));
    feeder.end_of_file();
    if (options.live_progress) std::fprintf(stderr, "\r\033[K");
    if (options.file_summaries) {
      const double s = seconds_since(file_start);
      std::fprintf(stderr, "prepare: %s: %s -> %" PRIu64 " tokens (%.1f MB/s)\n", path.c_str(),
                   megabytes(done).c_str(), writer.token_count() - tokens_before,
                   s > 0 ? static_cast<double>(done) / 1e6 / s : 0.0);
    }
  }
  if (writer.token_count() == 0)
    fail("prepare: the input files hold no text to tokenize (only blank lines?)");
  writer.commit();
  summary.tokens = writer.token_count();
  summary.documents = docs.documents();
  summary.literal_eot = docs.literal_eot();
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace lsgpt
