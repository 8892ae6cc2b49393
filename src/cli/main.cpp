// lsgpt's single binary. Every failure a user can cause reaches here as
// lsgpt::Error and is printed once, without a stack trace, with exit code 1;
// command-line mistakes exit with CLI11's code (2 for usage errors). Standard
// output is checked before a successful exit, so output lost to a full disk
// or a closed pipe is an error too. In a data-parallel run (mpirun) an error
// on any rank is printed with its rank and ends every rank (MPI_Abort), so no
// rank is left waiting in a collective for the one that failed; an error
// every rank raises at the same point (lsgpt::AgreedError: a stop signal) is
// printed once, by rank 0, and each process exits with status 1.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <exception>
#include <new>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "io/standard_output.h"

namespace {

int report_error(const char* message) {
  std::fflush(stdout);  // what was printed before the error comes first
  const int rank = lsgpt::distributed_rank();
  if (rank < 0) {
    std::fprintf(stderr, "lsgpt: error: %s\n", message);
    return 1;
  }
  std::fprintf(stderr, "lsgpt: error: rank %d: %s\n", rank, message);
  std::fflush(stderr);
  lsgpt::abort_all_ranks(1);
}

}  // namespace

int main(int argc, char** argv) {
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG and is
  // reported like a full disk, temporary files removed; by default SIGXFSZ
  // would kill the process and leave them behind.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"lsgpt: train, evaluate and sample GPT models with LS-attention"};
  app.set_version_flag("--version", std::string("lsgpt ") + LSGPT_VERSION);
  app.require_subcommand(1);
  // Registered commands (each defined in src/cli/cmd_<name>.cpp).
  lsgpt::cli::add_prepare_command(app);
  lsgpt::cli::add_train_command(app);
  lsgpt::cli::add_eval_command(app);
  lsgpt::cli::add_generate_command(app);
  lsgpt::cli::add_serve_command(app);
  lsgpt::cli::add_tokenize_command(app);
  lsgpt::cli::add_info_command(app);
  lsgpt::cli::add_study_command(app);
  lsgpt::cli::add_report_command(app);
  lsgpt::cli::add_export_command(app);
  lsgpt::cli::add_import_command(app);
  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      // --help and --version end here with status 0; a usage error is one
      // line in the form of every other error.
      if (e.get_exit_code() == 0) {
        app.exit(e);
      } else {
        return report_error((std::string(e.what()) + " (see lsgpt --help)").c_str());
      }
    }
    // Whatever printed (a command, --help), output that never arrived is a failure.
    lsgpt::close_stdout();
  } catch (const lsgpt::AgreedError& e) {
    std::fflush(stdout);
    if (*e.what()) std::fprintf(stderr, "lsgpt: error: %s\n", e.what());
    return 1;
  } catch (const lsgpt::Error& e) {
    return report_error(e.what());
  } catch (const std::bad_alloc&) {
    return report_error("out of memory");
  } catch (const std::exception& e) {
    return report_error(e.what());
  }
  return 0;
}
