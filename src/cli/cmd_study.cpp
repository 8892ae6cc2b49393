// lsgpt study-span: trains canonical attention and a list of span settings,
// on LS and/or MHSA models, with the same initialisation, data order and
// seeds, and writes a Markdown report: per setting the final validation loss
// over seeds, the paired change against canonical with a paired t-test and
// Holm's correction, the step-time overhead, and a plot of the validation
// curves. The raw outcomes go to RUNS_DIR/results.json; --merge builds one
// report from studies run apart (e.g. LS and MHSA on two GPUs at once).
#include <algorithm>
#include <cctype>
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
#include "core/statistics.h"
#include "core/stop_signals.h"
#include "data/token_file.h"
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
  // Canonical first; alpha_par swept on the cross basis; the self basis; and
  // alpha_perp alone (alpha_par = 1), the four families of issue #16.
  std::string settings =
      "off;q:cross:0.5:1,k:cross:0.5:1;q:cross:1.5:1,k:cross:1.5:1;q:cross:2:1,k:cross:2:1;"
      "q:cross:3:1,k:cross:3:1;q:self:0.5:1,k:self:0.5:1;q:cross:1:0.5,k:cross:1:0.5;"
      "q:cross:1:1.5,k:cross:1:1.5";
  // Comma-separated: ls (the model's local heads), mhsa (none); empty: the
  // model as configured (ls when it has local heads).
  std::string attention;
  std::string seeds = "1,2,3";
  double epochs = 0;  // > 0: steps from the training file's size
  std::string report = "docs/results/span-wikitext2.md";
  std::string runs_dir = "runs/span-study";
  std::vector<std::string> merge;  // results files of earlier runs: only write the report
};

// One training run's outcome, as stored in the results file.
struct RunOutcome {
  std::string attention, setting;
  uint64_t seed = 0;
  double val_loss = NAN;
  double ms_per_step = NAN;
  std::vector<std::pair<long, double>> curve;  // (step, val loss)
};

void to_json(json& j, const RunOutcome& o) {
  j = json{{"attention", o.attention}, {"setting", o.setting}, {"seed", o.seed},
           {"val_loss", o.val_loss}, {"ms_per_step", o.ms_per_step}, {"curve", o.curve}};
}

void from_json(const json& j, RunOutcome& o) {
  j.at("attention").get_to(o.attention);
  j.at("setting").get_to(o.setting);
  j.at("seed").get_to(o.seed);
  o.val_loss = j.at("val_loss").is_number() ? j["val_loss"].get<double>() : NAN;
  o.ms_per_step = j.at("ms_per_step").is_number() ? j["ms_per_step"].get<double>() : NAN;
  j.at("curve").get_to(o.curve);
}

// Everything the report needs; also what a study writes beside its report
// and what --merge reads back.
struct StudyResults {
  json model, training;  // descriptions for the report's header
  std::vector<std::string> settings, attention;
  std::vector<RunOutcome> runs;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

void read_metrics(const std::string& metrics, long skip_steps, double tokens_per_step,
                  RunOutcome& o) {
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
      ms += 1000.0 * tokens_per_step / r["tokens_per_s"].get<double>();
      ++n;
    }
  }
  o.ms_per_step = n ? ms / n : NAN;
}

uint64_t parse_seed(const std::string& text) {
  size_t used = 0;
  unsigned long long v = 0;
  try {
    if (!text.empty() && std::isdigit(static_cast<unsigned char>(text[0]))) v = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    fail("--seeds takes comma-separated integers from 0 to 2^64-1, got '", text, "'");
  return v;
}

ModelConfig model_for(const ModelConfig& base, const std::string& attention) {
  ModelConfig m = base;
  if (attention == "mhsa") {
    m.n_local.assign(m.n_layer, 0);
  } else if (attention == "ls") {
    if (std::all_of(m.n_local.begin(), m.n_local.end(), [](int n) { return n == 0; }))
      fail("--attention ls needs local heads: the model has none (give --n-local)");
  } else {
    fail("--attention takes ls and/or mhsa, got '", attention, "'");
  }
  return m;
}

long steps_for_epochs(double epochs, const TrainConfig& tc, int context) {
  const TokenFile train(tc.train_data);
  const double per_step =
      double(tc.batch_size) * (tc.seq_len ? tc.seq_len : context) * tc.grad_accum;
  return std::max(1L, long(std::ceil(epochs * double(train.size()) / per_step)));
}

std::string run_name(const std::string& attention, std::string setting) {
  std::replace(setting.begin(), setting.end(), ':', '_');
  std::replace(setting.begin(), setting.end(), ',', '+');
  return attention + "/" + setting;
}

json results_to_json(const StudyResults& r) {
  return json{{"model", r.model},         {"training", r.training}, {"settings", r.settings},
              {"attention", r.attention}, {"runs", r.runs}};
}

// One run of the study. A stop signal ends the study: the run's own error
// would advise `lsgpt train --resume`, which a rerun of the study does not
// use (it starts its runs over), so the study's error says what is kept.
TrainResult train_after_signal_check(const TrainOptions& o, size_t done,
                                     const std::string& results_file) {
  try {
    return train_model(o);
  } catch (const Error&) {
    const int signal = ScopedStopSignals::received();
    if (signal == 0) throw;
    std::printf("stopped\n");  // ends the run's progress line
    flush_stdout();
    const std::string kept = done == 0 ? std::string("no run had finished")
                                       : results_file + " holds the " + std::to_string(done) +
                                             " finished";
    fail("the study stopped by ", ScopedStopSignals::name(signal), " during its run ", done + 1,
         " (", o.train.out_dir, "); ", kept, "; running the study again starts every run over");
  }
}

StudyResults run_all(StudyFlags& f) {
  const ModelConfig base = f.model.resolve();
  StudyResults res;
  res.settings = split(f.settings, ';');
  const bool has_local =
      std::any_of(base.n_local.begin(), base.n_local.end(), [](int n) { return n > 0; });
  res.attention = split(f.attention.empty() ? (has_local ? "ls" : "mhsa") : f.attention, ',');
  std::vector<uint64_t> seeds;
  for (const std::string& s : split(f.seeds, ',')) seeds.push_back(parse_seed(s));
  if (res.settings.empty() || seeds.empty() || res.attention.empty())
    fail("study-span needs at least one setting, seed and attention kind");
  if (res.settings.front() != "off")
    fail("the first --settings entry must be 'off' (canonical), the baseline of the table");
  for (const std::string& s : res.settings) SpanConfig::parse(s);  // refuse bad settings up front
  auto has_repeats = [](auto v) {
    std::sort(v.begin(), v.end());
    return std::adjacent_find(v.begin(), v.end()) != v.end();
  };
  if (has_repeats(seeds)) fail("--seeds lists a seed twice: '", f.seeds, "'");
  if (has_repeats(res.settings)) fail("--settings lists a setting twice: '", f.settings, "'");
  if (has_repeats(res.attention)) fail("--attention lists a kind twice: '", f.attention, "'");
  if (f.train.steps < 1 && f.epochs <= 0) fail("--steps must be >= 1, got ", f.train.steps);
  for (const std::string& a : res.attention) model_for(base, a);
  TrainConfig tc = f.train;
  tc.train_data = f.data_dir + "/train.bin";
  tc.valid_data = f.data_dir + "/valid.bin";
  if (f.epochs > 0) tc.steps = steps_for_epochs(f.epochs, tc, base.seq_len);
  res.model = base.to_json();
  res.training = {{"steps", tc.steps}, {"epochs", f.epochs}, {"batch_size", tc.batch_size},
                  {"seq_len", tc.seq_len ? tc.seq_len : base.seq_len},
                  {"grad_accum", tc.grad_accum}, {"lr", tc.lr}, {"warmup", tc.warmup},
                  {"device", tc.device}, {"seeds", f.seeds},
                  {"final_eval_batches", tc.final_eval_batches}};

  std::error_code ec;
  fs::create_directories(f.runs_dir, ec);
  if (ec) fail("cannot create '", f.runs_dir, "': ", ec.message());
  const std::string results_file = f.runs_dir + "/results.json";
  const size_t total = res.settings.size() * seeds.size() * res.attention.size();
  size_t done = 0;
  // Seed-major, so that a study cut short still compares like with like.
  for (uint64_t seed : seeds)
    for (const std::string& attention : res.attention)
      for (const std::string& setting : res.settings) {
        TrainOptions o;
        o.model = model_for(base, attention);
        o.model.span = SpanConfig::parse(setting);
        o.train = tc;
        o.train.seed = seed;
        o.train.out_dir = f.runs_dir + "/" + run_name(attention, setting) + "/seed" +
                          std::to_string(seed);
        o.quiet = true;
        o.overwrite = true;  // the study's own folders: a rerun runs them again
        std::printf("[%zu/%zu] %s, span %s, seed %llu ... ", done + 1, total, attention.c_str(),
                    setting.c_str(), (unsigned long long)seed);
        flush_stdout();
        const TrainResult r = train_after_signal_check(o, done, results_file);
        RunOutcome out;  // the metrics fill the rest
        out.attention = attention, out.setting = setting, out.seed = seed;
        read_metrics(r.metrics, std::min<long>(5, tc.steps / 10),
                     double(tc.batch_size) * (tc.seq_len ? tc.seq_len : base.seq_len) * tc.grad_accum,
                     out);
        res.runs.push_back(std::move(out));
        // After every run, so that a study cut short (a time limit, a crash) keeps its runs.
        write_file_atomic(results_file, results_to_json(res).dump(1) + "\n");
        std::printf("val loss %.4f (%s)\n", r.val_loss, format_duration(r.seconds).c_str());
        flush_stdout();
        ++done;
      }
  return res;
}

// Several results files into one: e.g. LS and MHSA run on two GPUs at once,
// or the seeds of a study continued in another run. They must be the same
// experiment (model and training settings but the seeds); settings after the
// first file's must be among its; a run found twice must have the same loss
// (training is deterministic), and counts once.
void merge_into(StudyResults& all, StudyResults r, const std::string& file) {
  json a = all.training, b = r.training;
  a.erase("seeds"), b.erase("seeds");
  if (r.model != all.model || a != b)
    fail("'", file, "' is another experiment (model or training settings differ from the first file)");
  for (const std::string& s : r.settings)
    if (std::find(all.settings.begin(), all.settings.end(), s) == all.settings.end())
      fail("'", file, "' has setting '", s, "', which the first file lacks");
  for (const std::string& k : r.attention)
    if (std::find(all.attention.begin(), all.attention.end(), k) == all.attention.end())
      all.attention.push_back(k);
  for (RunOutcome& o : r.runs) {
    auto same = std::find_if(all.runs.begin(), all.runs.end(), [&](const RunOutcome& x) {
      return x.attention == o.attention && x.setting == o.setting && x.seed == o.seed;
    });
    if (same == all.runs.end()) {
      all.runs.push_back(std::move(o));
    } else if (!(same->val_loss == o.val_loss)) {
      fail("'", file, "' has ", o.attention, " ", o.setting, " seed ", o.seed, " with loss ",
           o.val_loss, " where an earlier file has ", same->val_loss, ": not the same experiment");
    }
  }
}

StudyResults merge_results(const std::vector<std::string>& files) {
  StudyResults all;
  for (const std::string& file : files) {
    // An ifstream opens a directory; reading it would throw a bare ios_base::failure.
    if (std::filesystem::is_directory(file))
      fail("the study results file '", file, "' is a directory");
    std::ifstream in(file);
    if (!in) fail("cannot open the study results file '", file, "'");
    StudyResults r;
    try {
      const json j = json::parse(in);
      r.model = j.at("model");
      r.training = j.at("training");
      j.at("settings").get_to(r.settings);
      j.at("attention").get_to(r.attention);
      j.at("runs").get_to(r.runs);
    } catch (const json::exception& e) {
      fail("'", file, "' is not a study-span results file: ", e.what());
    }
    if (all.settings.empty()) all = std::move(r);
    else merge_into(all, std::move(r), file);
  }
  std::vector<uint64_t> seeds;
  for (const RunOutcome& o : all.runs)
    if (std::find(seeds.begin(), seeds.end(), o.seed) == seeds.end()) seeds.push_back(o.seed);
  std::sort(seeds.begin(), seeds.end());
  std::string list;
  for (uint64_t seed : seeds) list += (list.empty() ? "" : ",") + std::to_string(seed);
  all.training["seeds"] = list;
  return all;
}

std::vector<double> losses(const StudyResults& r, const std::string& attention,
                           const std::string& setting, const std::vector<uint64_t>& seeds,
                           double RunOutcome::*field = &RunOutcome::val_loss) {
  std::vector<double> v;
  for (uint64_t seed : seeds)
    for (const RunOutcome& o : r.runs)
      if (o.attention == attention && o.setting == setting && o.seed == seed) v.push_back(o.*field);
  return v;
}

// The seeds every setting of this attention kind finished: pairs need both sides.
std::vector<uint64_t> complete_seeds(const StudyResults& r, const std::string& attention) {
  std::vector<uint64_t> seeds;
  for (const RunOutcome& o : r.runs)
    if (o.attention == attention && o.setting == "off" && std::isfinite(o.val_loss)) seeds.push_back(o.seed);
  std::erase_if(seeds, [&](uint64_t seed) {
    for (const std::string& s : r.settings) {
      const auto v = losses(r, attention, s, {seed});
      if (v.size() != 1 || !std::isfinite(v[0])) return true;
    }
    return false;
  });
  return seeds;
}

std::string table_for(const StudyResults& r, const std::string& attention) {
  const std::vector<uint64_t> seeds = complete_seeds(r, attention);
  if (seeds.size() < 2) return "Fewer than two complete seeds: no statistics.\n";
  const std::vector<double> base = losses(r, attention, "off", seeds);
  const double base_loss = mean_of(base);
  const double base_ms = mean_of(losses(r, attention, "off", seeds, &RunOutcome::ms_per_step));
  std::vector<PairedTest> tests;
  std::vector<double> p;
  for (size_t i = 1; i < r.settings.size(); ++i) {
    tests.push_back(paired_t_test(losses(r, attention, r.settings[i], seeds), base));
    p.push_back(tests.back().p_two_sided);
  }
  const std::vector<bool> reject = holm_reject(p);
  std::ostringstream md;
  md << "| setting | val loss, mean ± std over " << seeds.size()
     << " seeds | paired change vs canonical | 95% CI of the change | p (paired t) | "
        "beyond chance (Holm, 5%) | ms/step | step-time overhead |\n"
        "|---|---|---|---|---|---|---|---|\n";
  char buf[640];
  for (size_t i = 0; i < r.settings.size(); ++i) {
    const std::string& s = r.settings[i];
    const auto v = losses(r, attention, s, seeds);
    const double ms = mean_of(losses(r, attention, s, seeds, &RunOutcome::ms_per_step));
    const double overhead = 100.0 * (ms - base_ms) / base_ms;
    if (i == 0) {
      std::snprintf(buf, sizeof buf, "| off (canonical) | %.4f ± %.4f | baseline | | | | %.2f | |\n",
                    mean_of(v), sample_stddev(v), ms);
    } else {
      const PairedTest& t = tests[i - 1];
      const double pct = 100.0 / base_loss;
      std::snprintf(buf, sizeof buf,
                    "| `%s` | %.4f ± %.4f | %+.3f%% (%+.4f) | %+.3f%% ... %+.3f%% | %.3g | %s | "
                    "%.2f | %+.1f%% |\n",
                    s.c_str(), mean_of(v), sample_stddev(v), t.mean_diff * pct, t.mean_diff,
                    t.ci_low * pct, t.ci_high * pct, t.p_two_sided,
                    !reject[i - 1] ? "no" : t.mean_diff < 0 ? "**yes, lower**" : "yes, higher", ms,
                    overhead);
    }
    md << buf;
  }
  md << "\nPer seed (" << r.settings.size() << " settings in the order above):\n\n";
  for (uint64_t seed : seeds) {
    md << "- seed " << seed << ":";
    for (const std::string& s : r.settings) {
      std::snprintf(buf, sizeof buf, " %.4f", losses(r, attention, s, {seed})[0]);
      md << buf;
    }
    md << "\n";
  }
  return md.str();
}

std::string plot_curves(const StudyResults& r, const std::string& report, const std::string& work) {
  const std::string dat = work + "/curves.dat";
  std::ostringstream curves, g;
  int index = 0;
  g << "set terminal pngcairo size 1000,600 font 'sans,10'\nset grid\nset xlabel 'step'\n"
    << "set ylabel 'validation loss (mean over seeds)'\nset key outside right\n"
    << "set title 'Span/violation gradient scaling on WikiText-2'\nplot ";
  for (const std::string& a : r.attention)
    for (const std::string& s : r.settings) {
      std::map<long, std::vector<double>> by_step;
      for (const RunOutcome& o : r.runs)
        if (o.attention == a && o.setting == s)
          for (auto [step, loss] : o.curve) by_step[step].push_back(loss);
      curves << "# " << a << " " << s << "\n";
      for (auto& [step, v] : by_step) curves << step << ' ' << mean_of(v) << '\n';
      curves << "\n\n";
      g << (index ? ", " : "") << "'" << dat << "' index " << index
        << " using 1:2 with linespoints dashtype " << (a == "mhsa" ? 2 : 1) << " title '" << a
        << " " << s << "'";
      ++index;
    }
  g << "\n";
  write_file_atomic(dat, curves.str());
  if (!have_gnuplot()) return "";
  const std::string gp = work + "/curves.gp";
  write_file_atomic(gp, g.str());
  const std::string png = fs::path(report).replace_extension(".png").string();
  if (!render_png(gp, png)) return "";
  return "![validation curves](" + fs::path(png).filename().string() + ")\n";
}

void write_report(const StudyResults& r, const StudyFlags& f) {
  const fs::path report_dir = fs::path(f.report).parent_path();
  std::error_code ec;
  fs::create_directories(report_dir.empty() ? fs::path(".") : report_dir, ec);
  if (ec) fail("cannot create the directory of the report '", f.report, "': ", ec.message());
  fs::create_directories(f.runs_dir, ec);
  if (ec) fail("cannot create '", f.runs_dir, "': ", ec.message());
  const std::string plot_note = plot_curves(r, f.report, f.runs_dir);
  const json& t = r.training;
  std::ostringstream doc;
  doc << "# Span / violation gradient scaling on WikiText-2 (lsgpt's reconstruction)\n\n"
      << "Generated by `lsgpt study-span` (see docs/SPAN.md). Every setting trains the same "
         "model from the same initialisation with the same data order for each seed; only the "
         "attention backward differs.\n\n"
      << "- model: `" << r.model.dump() << "` (mhsa: the same with no local heads)\n"
      << "- training: " << t.value("steps", 0L) << " steps";
  if (t.value("epochs", 0.0) > 0) doc << " (" << t["epochs"].get<double>() << " epochs)";
  doc << ", batch " << t.value("batch_size", 0) << " x " << t.value("seq_len", 0)
      << " tokens, grad accum " << t.value("grad_accum", 1) << ", lr " << t.value("lr", 0.0)
      << ", warm-up " << t.value("warmup", 0L) << ", device " << t.value("device", "") << "\n"
      << "- seeds: " << t.value("seeds", "") << "; final validation loss over "
      << (t.value("final_eval_batches", 0L)
              ? "the first " + std::to_string(t["final_eval_batches"].get<long>()) + " batches of"
              : std::string("the whole"))
      << " validation split\n"
      << "- change: mean over seeds of (setting - canonical) with the same seed, in percent of "
         "canonical's mean; the paper reports -0.56%. p: two-sided paired t-test; 'beyond "
         "chance': rejected by Holm's procedure over this table's settings at 5%.\n\n";
  for (const std::string& a : r.attention)
    doc << "## " << (a == "mhsa" ? "MHSA (all heads global)" : "LS-attention") << "\n\n"
        << table_for(r, a) << "\n";
  doc << plot_note;
  write_file_atomic(f.report, doc.str());
  std::printf("report: %s\n", f.report.c_str());
}

void run_study(StudyFlags& f) {
  if (!f.merge.empty()) return write_report(merge_results(f.merge), f);
  const StudyResults results = run_all(f);
  std::printf("results: %s/results.json\n", f.runs_dir.c_str());
  write_report(results, f);
}

// CLI::PositiveNumber let nan through (the study then ran --steps, the
// default 1000, and recorded "epochs": null) and refused 0 with a range of
// 300 digits.
std::string positive_epochs(const std::string& text) {
  double v = NAN;
  try {
    v = std::stod(text);
  } catch (const std::exception&) {
  }
  return v > 0 && std::isfinite(v) ? "" : "must be a positive number of passes, got " + text;
}

}  // namespace

void add_study_command(CLI::App& app) {
  auto f = std::make_shared<StudyFlags>();
  CLI::App* cmd = app.add_subcommand(
      "study-span",
      "Train canonical attention and span settings on the same seeds; paired statistics, table, plot");
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
  cmd->add_option("--attention", f->attention,
                  "comma-separated: ls (the model's local heads), mhsa (every head global); "
                  "default: the model as configured");
  cmd->add_option("--epochs", f->epochs, "passes over train.bin (sets --steps)")
      ->check(positive_epochs);
  cmd->add_option("--merge", f->merge,
                  "only write the report from these results.json files of earlier studies");
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
