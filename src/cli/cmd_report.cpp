// `lsgpt report RUN_DIR... -o report.html` (src/train/report.h does the work).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "train/report.h"

namespace lsgpt::cli {
namespace {

// CLI::NonNegativeNumber refused -1 as "Value -1 not in range 0.000000 to"
// followed by the 309 digits of DBL_MAX.
std::string layer_index(const std::string& text) {
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  return digits ? "" : "must be a layer index (0, 1, ...), got " + text;
}

}  // namespace

void add_report_command(CLI::App& app) {
  auto o = std::make_shared<ReportOptions>();
  CLI::App* cmd = app.add_subcommand(
      "report",
      "Compare training runs on one self-contained HTML page (no network needed to open it): "
      "training and validation loss, learning rate, gradient norm, the largest attention logit "
      "of each layer over steps (and per head for --layer L), a summary of each run (steps, "
      "skipped steps, peak max logit and gradient norm) and every setting from each run's "
      "config.json, differences highlighted. Charts are gnuplot SVG, every step drawn (long "
      "runs thinned by min/max buckets so spikes stay visible); skipped (non-finite) steps "
      "are marked along the top. A damaged metrics.jsonl (cut mid-line, null values) becomes "
      "a note on the page");
  cmd->add_option("runs", o->run_dirs, "Run directories (each with metrics.jsonl, config.json)")
      ->required();
  cmd->add_option("-o,--output", o->output, "HTML page to write (atomically)")->required();
  cmd->add_option("--layer", o->head_layer,
                  "Also chart this layer's largest attention logit per head, for each run")
      ->check(layer_index);
  cmd->add_flag("--log-y", o->log_y,
                "Log-scale y axis for the max-logit and gradient-norm charts (growth and spikes "
                "over orders of magnitude)");
  cmd->add_option("--summary", o->summary_md,
                  "Also write a stability summary as Markdown: per run the attention kind, "
                  "stabilisers, lr, seed, final validation loss and perplexity, loss spikes, "
                  "divergence, peak max logit, median tokens/s and time to --target-loss; max "
                  "logit per layer; runs grouped by setting (config.json less seed and paths)");
  cmd->add_option("--summary-json", o->summary_json, "The same summary as JSON");
  auto target = std::make_shared<double>(0);
  CLI::Option* target_opt = cmd->add_option(
      "--target-loss", *target,
      "Validation loss for the summary's time-to-target columns: the first intermediate "
      "evaluation at or below it (its step and train_seconds); the final evaluation counts only "
      "in runs without intermediate ones, as it reads other validation batches");
  cmd->add_option("--svg-dir", o->svg_dir,
                  "Also write each chart as a standalone SVG file in this directory (loss.svg, "
                  "val_loss.svg, lr.svg, grad_norm.svg, max_logit.svg, max_logit_layerL.svg, "
                  "heads_layerL_runN.svg)");
  cmd->callback([o, target, target_opt] {
    if (target_opt->count() > 0) o->target_loss = *target;
    const ReportSummary s = write_report(*o);
    for (const std::string& note : s.notes)
      std::fprintf(stderr, "report: note: %s\n", note.c_str());
    std::fprintf(stderr, "report: wrote %s (%zu run(s), %d charts)\n", o->output.c_str(),
                 o->run_dirs.size(), s.charts);
    for (const std::string& f : s.files) std::fprintf(stderr, "report: wrote %s\n", f.c_str());
  });
}

}  // namespace lsgpt::cli
