// Draws a run's curves (training and validation loss; the largest attention
// logit per layer) as PNG files next to its metrics, through gnuplot. Plots are
// a convenience: without gnuplot the run still succeeds and says how to get them.
#pragma once

#include <string>
#include <vector>

namespace lsgpt {

// Returns the files written; prints a note (not an error) when gnuplot is missing.
std::vector<std::string> plot_run(const std::string& metrics_jsonl, const std::string& out_dir);

}  // namespace lsgpt
