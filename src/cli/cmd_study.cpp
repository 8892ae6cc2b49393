// lsgpt study-span: trains canonical attention and a list of span settings
// with the same initialisation, data order and seeds, and writes a Markdown
// table (mean and spread of the final validation loss, relative change
// against canonical, step-time overhead) and a plot of the validation curves.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/standard_output.h"
#include "train/plot.h"
#include "train/progress.h"
#include "train/trainer.h"

namespace lsgpt::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct StudyFlags {
  ModelOptions model;
  TrainConfig train;
  std::string data_dir = "runs/data/wikitext2";
  std::string settings =
      "off;q:cross:0.5:1,k:cross:0.5:1;q:cross:1.5:1,k:cross:1.5:1;q:cross:2:1,k:cross:2:1;"
      "q:cross:3:1,k:cross:3:1;q:self:0.5:1,k:self:0.5:1";
  std::string seeds = "1,2,3";
  std::string report = "docs/results/span-wikitext2.md";
  std::string runs_dir = "runs/span-study";
};

struct RunOutcome {
  double val_loss = NAN;
  double ms_per_step = NAN;
  std::vector<std::pair<long, double>> curve;  // (step, val loss)
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

RunOutcome read_outcome(const std::string& metrics, long skip_steps) {
  RunOutcome o;
  std::ifstream in(metrics);
  std::string line;
  double ms = 0;
  long n = 0;
  while (std::getline(in, line)) {
    const json r = json::parse(line);
    if (r["type"] == "eval") {
      o.curve.emplace_back(r["step"].get<long>(), r["val_loss"].get<double>());
      if (r.value("final", false)) o.val_loss = r["val_loss"].get<double>();
    } else if (r["type"] == "train" && r["step"].get<long>() > skip_steps &&
               r["tokens_per_s"].is_number()) {
      // tokens_per_s = tokens/step / seconds; the tokens per step cancel in the ratio below.
      ms += 1000.0 / r["tokens_per_s"].get<double>();
      ++n;
    }
  }
  o.ms_per_step = n ? ms / n : NAN;
  return o;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}

void run_study(StudyFlags& f) {
  const ModelConfig base = f.model.resolve();
  const std::vector<std::string> settings = split(f.settings, ';');
  std::vector<uint64_t> seeds;
  for (const std::string& s : split(f.seeds, ',')) seeds.push_back(std::stoull(s));
  if (settings.empty() || seeds.empty()) fail("study-span needs at least one setting and seed");
  if (settings.front() != "off")
    fail("the first --settings entry must be 'off' (canonical), the baseline of the table");
  for (const std::string& s : settings) SpanConfig::parse(s);  // refuse bad settings up front
  TrainConfig tc = f.train;
  tc.train_data = f.data_dir + "/train.bin";
  tc.valid_data = f.data_dir + "/valid.bin";

  std::map<std::string, std::vector<RunOutcome>> results;
  const size_t total = settings.size() * seeds.size();
  size_t done = 0;
  for (uint64_t seed : seeds) {  // seed-major, so a cut-short study still compares like with like
    for (const std::string& setting : settings) {
      TrainOptions o;
      o.model = base;
      o.model.span = SpanConfig::parse(setting);
      o.train = tc;
      o.train.seed = seed;
      std::string name = setting;
      std::replace(name.begin(), name.end(), ':', '_');
      std::replace(name.begin(), name.end(), ',', '+');
      o.train.out_dir = f.runs_dir + "/" + name + "/seed" + std::to_string(seed);
      o.quiet = true;
      std::printf("[%zu/%zu] span %s, seed %llu ... ", done + 1, total, setting.c_str(),
                  (unsigned long long)seed);
      flush_stdout();
      const TrainResult r = train_model(o);
      results[setting].push_back(read_outcome(r.metrics, std::min<long>(5, tc.steps / 10)));
      std::printf("val loss %.4f (%s)\n", r.val_loss, format_duration(r.seconds).c_str());
      flush_stdout();
      ++done;
    }
  }

  // Table.
  auto losses_of = [&](const std::string& s) {
    std::vector<double> v;
    for (const RunOutcome& o : results[s]) v.push_back(o.val_loss);
    return v;
  };
  auto ms_of = [&](const std::string& s) {
    std::vector<double> v;
    for (const RunOutcome& o : results[s]) v.push_back(o.ms_per_step);
    return v;
  };
  const double base_loss = mean(losses_of("off"));
  const double base_spread = stddev(losses_of("off"));
  const double base_ms = mean(ms_of("off"));
  std::ostringstream md;
  md << "| setting | final val loss (mean ± std over " << seeds.size()
     << " seeds) | per seed | change vs canonical | beyond seed spread? | ms/step | "
        "step-time overhead |\n|---|---|---|---|---|---|---|\n";
  char buf[512];
  for (const std::string& s : settings) {
    const auto v = losses_of(s);
    const double m = mean(v), sd = stddev(v), change = 100.0 * (m - base_loss) / base_loss;
    const double spread = std::max(sd, base_spread);
    std::string per_seed;
    for (double x : v) {
      std::snprintf(buf, sizeof buf, "%s%.4f", per_seed.empty() ? "" : ", ", x);
      per_seed += buf;
    }
    const double ms = mean(ms_of(s));
    const bool beyond = s != "off" && std::abs(m - base_loss) > spread;
    std::snprintf(buf, sizeof buf, "| `%s` | %.4f ± %.4f | %s | %+.2f%% | %s | %.1f | %+.1f%% |\n",
                  s == "off" ? "off (canonical)" : s.c_str(), m, sd, per_seed.c_str(), change,
                  s == "off" ? "baseline" : beyond ? (m < base_loss ? "**yes, better**" : "yes, worse")
                                                   : "no",
                  ms, 100.0 * (ms - base_ms) / base_ms);
    md << buf;
  }

  // Plot: validation curves, mean over seeds.
  const fs::path report_dir = fs::path(f.report).parent_path();
  std::error_code ec;
  fs::create_directories(report_dir.empty() ? fs::path(".") : report_dir, ec);
  if (ec) fail("cannot create the directory of the report '", f.report, "': ", ec.message());
  const std::string png = fs::path(f.report).replace_extension(".png").string();
  const std::string dat = f.runs_dir + "/curves.dat";
  std::ostringstream curves;
  for (const std::string& s : settings) {
    std::map<long, std::vector<double>> by_step;
    for (const RunOutcome& o : results[s])
      for (auto [step, loss] : o.curve) by_step[step].push_back(loss);
    curves << "# " << s << "\n";
    for (auto& [step, v] : by_step) curves << step << ' ' << mean(v) << '\n';
    curves << "\n\n";
  }
  write_file_atomic(dat, curves.str());
  std::string plot_note;
  if (have_gnuplot()) {
    const std::string gp = f.runs_dir + "/curves.gp";
    std::ostringstream g;
    g << "set terminal pngcairo size 900,540 font 'sans,10'\n"
      << "set grid\nset xlabel 'step'\nset ylabel 'validation loss (mean over seeds)'\n"
      << "set title 'Span/violation gradient scaling on WikiText-2'\nplot ";
    for (size_t i = 0; i < settings.size(); ++i)
      g << (i ? ", " : "") << "'" << dat << "' index " << i << " using 1:2 with linespoints title '"
        << settings[i] << "'";
    g << "\n";
    write_file_atomic(gp, g.str());
    if (render_png(gp, png))
      plot_note = "![validation curves](" + fs::path(png).filename().string() + ")\n";
  }

  std::ostringstream doc;
  doc << "# Span / violation gradient scaling on WikiText-2 (lsgpt's reconstruction)\n\n"
      << "Generated by `lsgpt study-span` (see docs/SPAN.md). Every setting trains the same "
         "model from the same initialisation with the same data order for each seed; only the "
         "attention backward differs.\n\n"
      << "- model: `" << base.to_json().dump() << "`\n"
      << "- training: " << tc.steps << " steps, batch " << tc.batch_size << " x "
      << (tc.seq_len ? tc.seq_len : base.seq_len) << " tokens, grad accum " << tc.grad_accum
      << ", lr " << tc.lr << ", warm-up " << tc.warmup << ", device " << tc.device << "\n"
      << "- seeds: " << f.seeds << "; final validation loss over "
      << (tc.final_eval_batches ? "the first " + std::to_string(tc.final_eval_batches) +
                                      " batches of"
                                : std::string("the whole"))
      << " the WikiText-2 validation split\n"
      << "- 'beyond seed spread' means |mean - canonical mean| > max(std of the setting, std of "
         "canonical)\n\n"
      << md.str() << "\n" << plot_note;
  write_file_atomic(f.report, doc.str());
  std::printf("\n%s\nreport: %s\n", md.str().c_str(), f.report.c_str());
}

}  // namespace

void add_study_command(CLI::App& app) {
  auto f = std::make_shared<StudyFlags>();
  CLI::App* cmd = app.add_subcommand(
      "study-span",
      "Train canonical attention and span settings on the same seeds; write a table and plot");
  f->model.add_to(cmd);
  TrainConfig& t = f->train;
  t.eval_every = 50;
  t.eval_batches = 10;
  t.checkpoint_every = 0;
  cmd->add_option("--data-dir", f->data_dir, "directory with train.bin and valid.bin")
      ->capture_default_str();
  cmd->add_option("--settings", f->settings,
                  "';'-separated span settings; the first must be 'off'")
      ->capture_default_str();
  cmd->add_option("--seeds", f->seeds, "comma-separated seeds")->capture_default_str();
  cmd->add_option("--report", f->report, "Markdown report (a .png plot is written beside it)")
      ->capture_default_str();
  cmd->add_option("--runs-dir", f->runs_dir, "where each run's directory goes")
      ->capture_default_str();
  cmd->add_option("--device", t.device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--steps", t.steps, "steps per run")->capture_default_str();
  cmd->add_option("--batch-size", t.batch_size)->capture_default_str();
  cmd->add_option("--train-seq-len", t.seq_len, "tokens per sequence (default: context)");
  cmd->add_option("--grad-accum", t.grad_accum)->capture_default_str();
  cmd->add_option("--lr", t.lr)->capture_default_str();
  cmd->add_option("--warmup", t.warmup)->capture_default_str();
  cmd->add_option("--eval-every", t.eval_every)->capture_default_str();
  cmd->add_option("--eval-batches", t.eval_batches)->capture_default_str();
  cmd->add_option("--final-eval-batches", t.final_eval_batches,
                  "validation batches for each run's final loss (0: whole file)")
      ->capture_default_str();
  cmd->callback([f] { run_study(*f); });
}

}  // namespace lsgpt::cli
