// Each subcommand lives in its own cmd_<name>.cpp and adds itself to the app
// through one of these functions; main.cpp lists them in the order --help shows.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "core/error.h"

namespace lsgpt::cli {

// CLI11 reads "-1" or 2^64 into a uint64_t by wrapping around; seeds must be
// what the user typed, so anything but a decimal 0 .. 2^64-1 is refused.
inline const CLI::Validator kUnsigned64(
    [](std::string& text) {
      uint64_t value = 0;
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (text.empty() || ec != std::errc() || end != text.data() + text.size())
        return std::string("must be an integer from 0 to 18446744073709551615");
      return std::string();
    },
    "UINT64");

// Fails with "<output_name> <output> is also an input; it would be
// overwritten" when `output` is one of `inputs` by any path (a link, ./x):
// the command would replace what it reads. Paths that do not exist yet
// are no input.
inline void refuse_output_over_inputs(const std::string& output_name, const std::string& output,
                                      const std::vector<std::string>& inputs) {
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (std::filesystem::equivalent(input, output, ec))
      fail(output_name, " ", output, " is also an input; it would be overwritten");
  }
}

void add_prepare_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_import_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_study_command(CLI::App& app);
void add_report_command(CLI::App& app);

}  // namespace lsgpt::cli
