// `lsgpt report`: one self-contained HTML page comparing training runs. Each
// chart is drawn by gnuplot as SVG and inlined, so the page needs no network,
// script or other file to open. Optionally the charts also go to standalone
// SVG files, and a stability summary (spikes, divergence, peak logits,
// throughput, time to a target loss, per-setting groups) to Markdown and
// JSON. What it reads from a run directory is what the trainer writes there: metrics.jsonl ("train" records: step, loss, lr,
// grad_norm, max_logit[layer][head], skipped; "eval" records: step, val_loss)
// and config.json ({"model": ..., "train": ...}).
//
// Made for stability studies: every step is drawn (long runs are thinned to
// the minimum and maximum of each bucket, so a one-step spike survives),
// skipped (non-finite) steps get a marker along the top of the loss, gradient
// and logit charts, and max logits and gradient norms can take a log scale.
//
// Damaged input does not stop the page: a metrics.jsonl cut mid-line, lines
// that are not JSON, null or non-finite values, runs of different depths and
// a missing config.json each become a note on the page. Only a missing run
// directory or metrics file, or no gnuplot, is an error. Every string that
// comes from a run is escaped into HTML, and runs are named "run N" inside the
// charts so no such string reaches gnuplot.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace lsgpt {

struct ReportOptions {
  std::vector<std::string> run_dirs;
  std::string output;       // written atomically
  int head_layer = -1;      // also draw this layer's max logit per head; -1: no
  bool log_y = false;       // log-scale y for the max-logit and gradient-norm charts
  size_t max_points = 4000; // per series; longer series are thinned by min/max buckets
  // Stability summary (train/stability_summary.h); empty: not written.
  std::string summary_md, summary_json;
  std::optional<double> target_loss;  // for the summary's time-to-target columns
  // Also write each chart as a standalone SVG file here (created if missing):
  // loss.svg, val_loss.svg, lr.svg, grad_norm.svg, max_logit.svg,
  // max_logit_layerL.svg, heads_layerL_runN.svg; empty: not written.
  std::string svg_dir;
};

struct ReportSummary {
  int charts = 0;
  std::vector<std::string> notes;  // also on the page, one per problem found
  std::vector<std::string> files;  // summary and SVG files written besides the page
};

ReportSummary write_report(const ReportOptions& options);

}  // namespace lsgpt
