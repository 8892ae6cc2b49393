// lsgpt's single binary. Every failure a user can cause reaches here as
// lsgpt::Error and is printed once, without a stack trace, with exit code 1;
// command-line mistakes exit with CLI11's code (2 for usage errors).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <new>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"lsgpt: train, evaluate and sample GPT models with LS-attention"};
  app.set_version_flag("--version", std::string("lsgpt ") + LSGPT_VERSION);
  app.require_subcommand(1);
  // Registered commands (each defined in src/cli/cmd_<name>.cpp).
  lsgpt::cli::add_prepare_command(app);
  lsgpt::cli::add_train_command(app);
  lsgpt::cli::add_eval_command(app);
  lsgpt::cli::add_generate_command(app);
  lsgpt::cli::add_tokenize_command(app);
  lsgpt::cli::add_info_command(app);
  lsgpt::cli::add_study_command(app);
  lsgpt::cli::add_export_command(app);
  lsgpt::cli::add_import_command(app);
  try {
    CLI11_PARSE(app, argc, argv);
  } catch (const lsgpt::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lsgpt: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "lsgpt: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lsgpt: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
