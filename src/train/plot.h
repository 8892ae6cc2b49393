// Draws a run's curves (training and validation loss; the largest attention
// logit per layer) as PNG files next to its metrics, through gnuplot. Plots are
// a convenience: without gnuplot, or when gnuplot cannot draw, the run still
// succeeds and says so. Writing is not optional: gnuplot ignores its own write
// errors, so it draws to a pipe and lsgpt writes every file atomically; a
// failed write is an lsgpt::Error like any other.
#pragma once

#include <string>
#include <vector>

namespace lsgpt {

// Returns the images written; prints a note (not an error) when gnuplot is
// missing or fails.
std::vector<std::string> plot_run(const std::string& metrics_jsonl, const std::string& out_dir);

bool have_gnuplot();

// Runs the gnuplot script at `script` (a png terminal with no `set output`,
// so the image comes on gnuplot's standard output) and writes the image to
// `png` atomically. False, after a note on stderr, when gnuplot fails.
bool render_png(const std::string& script, const std::string& png);

// Runs the gnuplot script at `script` (an svg terminal with no `set output`)
// and returns the SVG document it draws; empty, after a note on stderr, when
// gnuplot fails.
std::string render_svg(const std::string& script);

}  // namespace lsgpt
