// The report's charts: each is a gnuplot script over small data files (step,
// value) in a scratch directory, rendered to SVG and inlined into the page.
#include "train/report.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "train/plot.h"
#include "train/run_metrics.h"
#include "train/stability_summary.h"

namespace lsgpt {

namespace {

namespace fs = std::filesystem;
using Series = std::vector<std::pair<long, double>>;

constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                   "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};

std::string color(size_t i) { return kColors[i % (sizeof kColors / sizeof *kColors)]; }

std::string html_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string fmt(double v) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// Keeps at most about max_points points: past that, each bucket of steps
// keeps its lowest and highest point (in step order), so spikes survive.
Series thin(const Series& s, size_t max_points) {
  if (s.size() <= max_points) return s;
  const size_t buckets = std::max<size_t>(1, max_points / 2);
  Series out;
  for (size_t b = 0; b < buckets; ++b) {
    const size_t lo = s.size() * b / buckets, hi = s.size() * (b + 1) / buckets;
    if (lo >= hi) continue;
    size_t mn = lo, mx = lo;
    for (size_t i = lo; i < hi; ++i) {
      if (s[i].second < s[mn].second) mn = i;
      if (s[i].second > s[mx].second) mx = i;
    }
    out.push_back(s[std::min(mn, mx)]);
    if (mn != mx) out.push_back(s[std::max(mn, mx)]);
  }
  return out;
}

// A scratch directory for data files and scripts, removed at the end.
class Scratch {
 public:
  Scratch() {
    std::string pattern = (fs::temp_directory_path() / "lsgpt_report_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) fail("report: cannot create a scratch directory in /tmp");
    dir_ = pattern;
    if (dir_.string().find('\'') != std::string::npos)
      fail("report: the scratch directory ", dir_.string(), " has a quote in its name");
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
};

struct Line {
  std::string title;  // never from the run: "run N", "head H"
  std::string color;
  Series points;
  bool markers = false;     // points on the line (sparse series: validation)
  bool top_marks = false;   // drawn as marks along the top edge (skipped steps)
};

struct Chart {
  std::string file;  // stable name of its standalone SVG (--svg-dir)
  std::string title, ylabel;
  bool log_y = false;
  std::vector<Line> lines;
};

class ChartRenderer {
 public:
  explicit ChartRenderer(const Scratch& scratch) : scratch_(scratch) {}
  // Empty when the chart has nothing to draw or gnuplot fails.
  std::string svg(const Chart& chart) {
    const int id = next_++;
    std::ostringstream gp;
    gp << "set terminal svg size 960,420 dynamic noenhanced font 'sans,11' background '#ffffff'\n"
       << "set grid\nset key outside right top\nset xlabel 'step'\n"
       << "set title '" << chart.title << "'\nset ylabel '" << chart.ylabel << "'\n"
       << "set y2range [0:1]\nunset y2tics\n";
    if (chart.log_y) gp << "set logscale y\n";
    std::vector<std::string> plots;
    for (size_t i = 0; i < chart.lines.size(); ++i) {
      const Line& line = chart.lines[i];
      if (line.points.empty()) continue;
      const std::string dat = scratch_.file(std::to_string(id) + "_" + std::to_string(i) + ".dat");
      std::ostringstream data;
      data.precision(9);
      for (const auto& [step, v] : line.points) data << step << ' ' << v << '\n';
      write_file_atomic(dat, data.str());
      std::string p = "'" + dat + "' using 1:";
      if (line.top_marks)
        p += "(0.97) axes x1y2 with points pt 2 ps 0.9";
      else
        p += line.markers ? "2 with linespoints pt 7 ps 0.6 lw 1.5" : "2 with lines lw 1.2";
      plots.push_back(p + " lc rgb '" + line.color + "' title '" + line.title + "'");
    }
    if (plots.empty()) return "";
    gp << "plot ";
    for (size_t i = 0; i < plots.size(); ++i) gp << (i ? ", \\\n     " : "") << plots[i];
    gp << "\n";
    const std::string script = scratch_.file(std::to_string(id) + ".gp");
    write_file_atomic(script, gp.str());
    return render_svg(script);
  }

 private:
  const Scratch& scratch_;
  int next_ = 0;
};

std::string run_name(size_t i) { return "run " + std::to_string(i + 1); }

// A series from the training records; non-finite values (and, on a log
// scale, values <= 0) are left out.
Series train_series(const RunMetrics& run, const std::function<double(const TrainRecord&)>& f,
                    bool log_y, size_t max_points) {
  Series s;
  for (const TrainRecord& t : run.train) {
    const double v = f(t);
    if (std::isfinite(v) && (!log_y || v > 0)) s.push_back({t.step, v});
  }
  return thin(s, max_points);
}

Series skipped_steps(const RunMetrics& run) {
  Series s;
  for (const TrainRecord& t : run.train)
    if (t.skipped) s.push_back({t.step, 1.0});
  return s;
}

double layer_max(const TrainRecord& t, int layer) {
  if (layer >= int(t.max_logit.size())) return NAN;
  double m = NAN;
  for (const double h : t.max_logit[layer])
    if (std::isfinite(h) && !(h <= m)) m = h;
  return m;
}

// One chart of a per-step quantity with a line per run and, where a run
// skipped steps, a mark per skipped step along the top. `layer` >= 0: a
// per-layer chart, where runs without that layer get no marks either.
Chart per_run_chart(const std::vector<RunMetrics>& runs, const std::string& file,
                    const std::string& title,
                    const std::string& ylabel, bool log_y, size_t max_points,
                    const std::function<double(const TrainRecord&)>& f, int layer = -1) {
  Chart c{file, title, ylabel, log_y, {}};
  for (size_t i = 0; i < runs.size(); ++i)
    c.lines.push_back({run_name(i), color(i), train_series(runs[i], f, log_y, max_points)});
  for (size_t i = 0; i < runs.size(); ++i)
    if (layer < runs[i].n_layer)
      c.lines.push_back(
          {run_name(i) + " skipped step", color(i), skipped_steps(runs[i]), false, true});
  return c;
}

std::vector<Chart> build_charts(const std::vector<RunMetrics>& runs, const ReportOptions& o,
                                std::vector<std::string>& notes) {
  const size_t n = o.max_points;
  std::vector<Chart> charts;
  charts.push_back(per_run_chart(runs, "loss.svg", "Training loss (nats per token)",
                                 "cross-entropy", false, n,
                                 [](const TrainRecord& t) { return t.loss; }));
  Chart val{"val_loss.svg", "Validation loss (nats per token)", "cross-entropy", false, {}};
  for (size_t i = 0; i < runs.size(); ++i) {
    Series s;
    for (const EvalRecord& e : runs[i].eval)
      if (std::isfinite(e.val_loss)) s.push_back({e.step, e.val_loss});
    val.lines.push_back({run_name(i), color(i), s, true});
  }
  charts.push_back(val);
  charts.push_back(per_run_chart(runs, "lr.svg", "Learning rate", "lr", false, n,
                                 [](const TrainRecord& t) { return t.lr; }));
  charts.push_back(per_run_chart(runs, "grad_norm.svg", "Gradient norm (global, before clipping)",
                                 "norm", o.log_y, n,
                                 [](const TrainRecord& t) { return t.grad_norm; }));
  int layers = 0;
  for (const RunMetrics& r : runs) layers = std::max(layers, r.n_layer);
  charts.push_back(per_run_chart(runs, "max_logit.svg", "Largest attention logit, all layers",
                                 "max logit", o.log_y, n, [layers](const TrainRecord& t) {
                                   double m = NAN;
                                   for (int l = 0; l < layers; ++l) {
                                     const double v = layer_max(t, l);
                                     if (std::isfinite(v) && !(v <= m)) m = v;
                                   }
                                   return m;
                                 }));
  for (int l = 0; l < layers; ++l)
    charts.push_back(per_run_chart(runs, "max_logit_layer" + std::to_string(l) + ".svg",
                                   "Layer " + std::to_string(l) +
                                       ": largest pre-softmax attention logit (max over heads)",
                                   "max logit", o.log_y, n,
                                   [l](const TrainRecord& t) { return layer_max(t, l); }, l));
  if (o.head_layer < 0) return charts;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = runs[i];
    if (o.head_layer >= r.n_layer) {
      notes.push_back(run_name(i) + " has " + std::to_string(r.n_layer) + " layer(s) recorded; "
                      "--layer " + std::to_string(o.head_layer) + " is not one of them");
      continue;
    }
    Chart c{"heads_layer" + std::to_string(o.head_layer) + "_run" + std::to_string(i + 1) + ".svg",
            run_name(i) + ", layer " + std::to_string(o.head_layer) +
                ": largest attention logit per head",
            "max logit", o.log_y, {}};
    for (int h = 0; h < r.n_head; ++h)
      c.lines.push_back({"head " + std::to_string(h), color(h),
                         train_series(r, [&](const TrainRecord& t) {
                           const auto& ml = t.max_logit;
                           if (o.head_layer >= int(ml.size()) || h >= int(ml[o.head_layer].size()))
                             return double(NAN);
                           return ml[o.head_layer][h];
                         }, o.log_y, n)});
    c.lines.push_back({"skipped step", "#000000", skipped_steps(r), false, true});
    charts.push_back(c);
  }
  return charts;
}

// The largest value of f over the run's steps, with its step.
std::string peak(const RunMetrics& run, const std::function<double(const TrainRecord&)>& f) {
  double best = NAN;
  long at = 0;
  for (const TrainRecord& t : run.train) {
    const double v = f(t);
    if (std::isfinite(v) && !(v <= best)) best = v, at = t.step;
  }
  return std::isfinite(best) ? fmt(best) + " (step " + std::to_string(at) + ")" : "n/a";
}

std::string runs_table(const std::vector<RunMetrics>& runs) {
  std::ostringstream h;
  h << "<table><tr><th>run</th><th>directory</th><th>steps</th><th>last train loss</th>"
       "<th>last val loss</th><th>skipped steps</th><th>peak max logit</th>"
       "<th>peak grad norm</th><th>notes</th></tr>\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunMetrics& r = runs[i];
    long skipped = 0;
    for (const TrainRecord& t : r.train) skipped += t.skipped;
    h << "<tr><td><span class=\"swatch\" style=\"background:" << color(i) << "\"></span>"
      << run_name(i) << "</td><td><code>" << html_escape(r.dir) << "</code></td><td>"
      << (r.train.empty() ? 0 : r.train.back().step) << "</td><td>"
      << (r.train.empty() ? "n/a" : fmt(r.train.back().loss)) << "</td><td>"
      << (r.eval.empty() ? "n/a" : fmt(r.eval.back().val_loss)) << "</td><td"
      << (skipped ? " class=\"bad\"" : "") << ">" << skipped << "</td><td>"
      << peak(r, [&](const TrainRecord& t) {
           double m = NAN;
           for (int l = 0; l < r.n_layer; ++l) {
             const double v = layer_max(t, l);
             if (std::isfinite(v) && !(v <= m)) m = v;
           }
           return m;
         })
      << "</td><td>" << peak(r, [](const TrainRecord& t) { return t.grad_norm; }) << "</td><td>";
    for (const std::string& note : r.notes) h << "<div class=\"note\">" << html_escape(note) << "</div>";
    h << "</td></tr>\n";
  }
  h << "</table>\n";
  return h.str();
}

// config.json flattened to "model.n_layer"-style keys.
void flatten(const nlohmann::json& j, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
    return;
  }
  out[prefix] = j.is_string() ? j.get<std::string>() : j.dump();
}

std::string settings_table(const std::vector<RunMetrics>& runs) {
  std::vector<std::map<std::string, std::string>> flat(runs.size());
  std::set<std::string> keys;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (!runs[i].config.is_null()) flatten(runs[i].config, "", flat[i]);
    for (const auto& kv : flat[i]) keys.insert(kv.first);
  }
  std::ostringstream h;
  h << "<p>Settings from each run's <code>config.json</code>; rows where the runs differ are "
       "highlighted.</p>\n<table><tr><th>setting</th>";
  for (size_t i = 0; i < runs.size(); ++i) h << "<th>" << run_name(i) << "</th>";
  h << "</tr>\n";
  for (const std::string& key : keys) {
    std::set<std::string> values;
    for (const auto& f : flat) values.insert(f.count(key) ? f.at(key) : "\x01");
    h << "<tr" << (values.size() > 1 ? " class=\"diff\"" : "") << "><td><code>"
      << html_escape(key) << "</code></td>";
    for (const auto& f : flat)
      h << "<td>" << (f.count(key) ? html_escape(f.at(key)) : "<i>absent</i>") << "</td>";
    h << "</tr>\n";
  }
  h << "</table>\n";
  return h.str();
}

constexpr const char* kStyle = R"(<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr.diff td { background: #fff6d5; }
td.bad { color: #b00; font-weight: bold; }
.note { color: #a33; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; }
figure { margin: 0 0 1em; }
figure svg { width: 100%; max-width: 960px; height: auto; }
</style>
)";

std::string page(const std::vector<RunMetrics>& runs, const std::vector<std::string>& svgs,
                 const std::vector<std::string>& notes, const ReportOptions& o) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    << "<title>lsgpt report: " << runs.size() << " run(s)</title>\n" << kStyle << "</head><body>\n"
    << "<h1>lsgpt training report</h1>\n<p>lsgpt " << LSGPT_VERSION << "; "
    << (o.log_y ? "log-scale" : "linear") << " y for gradient norms and max logits; "
    << "marks along the top of a chart are steps whose update was skipped (non-finite loss "
       "or gradient).</p>\n<h2>Runs</h2>\n"
    << runs_table(runs);
  for (const std::string& n : notes) h << "<p class=\"note\">" << html_escape(n) << "</p>\n";
  h << "<h2>Curves</h2>\n";
  for (const std::string& svg : svgs) h << "<figure>\n" << svg << "</figure>\n";
  h << "<h2>Settings</h2>\n" << settings_table(runs) << "</body></html>\n";
  return h.str();
}

// One spelling per file or directory, so that two names for it compare equal.
fs::path canonical(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(path, ec);
  return ec ? fs::path(path).lexically_normal() : p;
}

// Two names for one run would count it twice in the summary's groups.
void check_distinct_runs(const std::vector<std::string>& dirs) {
  std::vector<fs::path> seen;
  for (const std::string& d : dirs) {
    const fs::path c = canonical(d);
    if (std::find(seen.begin(), seen.end(), c) != seen.end())
      fail("report: the run directory ", d, " is given twice");
    seen.push_back(c);
  }
}

bool same_file(const std::string& a, const std::string& b) {
  return !a.empty() && !b.empty() && canonical(a) == canonical(b);
}

// `report RUN -o RUN/metrics.jsonl` used to replace the run's metrics with the page.
void check_outputs_are_not_inputs(const ReportOptions& o) {
  for (const std::string& dir : o.run_dirs)
    for (const char* name : {"metrics.jsonl", "config.json", "checkpoint.ckpt"})
      for (const std::string* out : {&o.output, &o.summary_md, &o.summary_json})
        if (same_file(*out, (fs::path(dir) / name).string()))
          fail("report: ", *out, " is the ", name, " of run ", dir, "; it would be overwritten");
}

void check_summary_options(const ReportOptions& o) {
  if (o.target_loss && !std::isfinite(*o.target_loss))
    fail("report: --target-loss must be a finite number, not ", *o.target_loss);
  if (o.target_loss && o.summary_md.empty() && o.summary_json.empty())
    fail("report: --target-loss is for the summary; add --summary FILE.md or --summary-json FILE");
  if (same_file(o.output, o.summary_md) || same_file(o.output, o.summary_json) ||
      same_file(o.summary_md, o.summary_json))
    fail("report: -o, --summary and --summary-json must name different files");
  if (o.svg_dir.empty()) return;
  std::error_code ec;
  fs::create_directories(o.svg_dir, ec);
  if (!fs::is_directory(o.svg_dir))
    fail("report: cannot create the SVG directory ", o.svg_dir, ec ? ": " + ec.message() : "");
}

// The stability summary files asked for; returns their paths.
std::vector<std::string> write_stability_summary(const std::vector<RunMetrics>& runs,
                                                 const ReportOptions& o) {
  if (o.summary_md.empty() && o.summary_json.empty()) return {};
  StabilityOptions so;
  so.target_loss = o.target_loss;
  std::vector<RunStability> stats;
  for (const RunMetrics& r : runs) stats.push_back(summarise_run(r, so));
  const std::vector<StabilityGroup> groups = group_runs(stats);
  std::vector<std::string> files;
  if (!o.summary_md.empty()) {
    write_file_atomic(o.summary_md, summary_markdown(stats, groups, so));
    files.push_back(o.summary_md);
  }
  if (!o.summary_json.empty()) {
    write_file_atomic(o.summary_json, summary_json(stats, groups, so).dump(2) + "\n");
    files.push_back(o.summary_json);
  }
  return files;
}

}  // namespace

ReportSummary write_report(const ReportOptions& o) {
  if (o.run_dirs.empty()) fail("report: give at least one run directory");
  if (o.output.empty()) fail("report: give the page to write with -o REPORT.html");
  if (o.head_layer < -1) fail("report: --layer must be 0 or more, not ", o.head_layer);
  check_distinct_runs(o.run_dirs);
  check_outputs_are_not_inputs(o);
  check_summary_options(o);
  std::vector<RunMetrics> runs;
  for (const std::string& dir : o.run_dirs) runs.push_back(read_run_metrics(dir));
  if (!have_gnuplot()) fail("report: gnuplot not found; install gnuplot-nox to draw the charts");
  ReportSummary summary;
  const Scratch scratch;
  ChartRenderer renderer(scratch);
  std::vector<std::string> svgs, svg_files;
  for (const Chart& chart : build_charts(runs, o, summary.notes)) {
    std::string svg = renderer.svg(chart);
    if (svg.empty()) {
      summary.notes.push_back("nothing to draw for \"" + chart.title + "\"");
      continue;
    }
    svgs.push_back(std::move(svg));
    svg_files.push_back(chart.file);
  }
  summary.charts = int(svgs.size());
  // The summary first: an unwritable summary path stops the report before any
  // other file is written.
  summary.files = write_stability_summary(runs, o);
  for (size_t i = 0; i < svgs.size() && !o.svg_dir.empty(); ++i) {
    // A standalone file needs the XML prolog that the inlined copy leaves out.
    const std::string path = (fs::path(o.svg_dir) / svg_files[i]).string();
    write_file_atomic(path, "<?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"no\"?>\n" +
                                svgs[i]);
    summary.files.push_back(path);
  }
  write_file_atomic(o.output, page(runs, svgs, summary.notes, o));
  for (size_t i = 0; i < runs.size(); ++i)
    for (const std::string& note : runs[i].notes)
      summary.notes.push_back(run_name(i) + " (" + runs[i].dir + "): " + note);
  return summary;
}

}  // namespace lsgpt
