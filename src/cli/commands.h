// Each subcommand lives in its own cmd_<name>.cpp and adds itself to the app
// through one of these functions; main.cpp lists them in the order --help shows.
#pragma once

#include <CLI/CLI.hpp>

namespace lsgpt::cli {

void add_prepare_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_import_command(CLI::App& app);
void add_study_command(CLI::App& app);

}  // namespace lsgpt::cli
