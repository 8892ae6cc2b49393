#include "train/plot.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"

namespace lsgpt {
namespace fs = std::filesystem;

namespace {

struct PlotData {
  std::ostringstream train, eval, logits;
  long train_rows = 0, eval_rows = 0;
  int n_layer = 0;
};

void add_train_record(const nlohmann::json& r, PlotData& d) {
  d.train << r["step"].get<long>() << ' ' << r["loss"].get<double>() << '\n';
  ++d.train_rows;
  if (!r.contains("max_logit")) return;
  const auto& ml = r["max_logit"];
  d.n_layer = int(ml.size());
  d.logits << r["step"].get<long>();
  for (const auto& layer : ml) {
    double m = -1e30;
    for (const auto& h : layer)
      if (h.is_number()) m = std::max(m, h.get<double>());
    d.logits << ' ' << m;
  }
  d.logits << '\n';
}

void read_metrics(const std::string& metrics_jsonl, PlotData& d) {
  std::ifstream in(metrics_jsonl);
  if (!in) fail("cannot read metrics file '", metrics_jsonl, "'");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.contains("type")) continue;
    if (r["type"] == "train" && r.contains("loss") && r["loss"].is_number()) {
      add_train_record(r, d);
    } else if (r["type"] == "eval" && r.contains("val_loss") && r["val_loss"].is_number()) {
      d.eval << r["step"].get<long>() << ' ' << r["val_loss"].get<double>() << '\n';
      ++d.eval_rows;
    }
  }
}

constexpr const char* kTerminal = "set terminal pngcairo size 900,540 enhanced font 'sans,10'\n";

}  // namespace

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

namespace {

// gnuplot's standard output and whether it exited cleanly. With `log`, its
// messages (warnings such as "empty y range") go there instead of stderr.
std::pair<std::string, bool> run_gnuplot(const std::string& script, const std::string& log = "") {
  const std::string cmd = "gnuplot '" + script + "'" + (log.empty() ? "" : " 2>'" + log + "'");
  std::FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) fail("cannot run gnuplot on '", script, "'");
  std::string image;
  std::array<char, 65536> buf;
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0;) image.append(buf.data(), n);
  return {image, ::pclose(pipe) == 0};
}

}  // namespace

std::string render_svg(const std::string& script) {
  const std::string log = script + ".log";
  auto [svg, ok] = run_gnuplot(script, log);
  const size_t start = svg.find("<svg");
  if (!ok || start == std::string::npos || svg.find("</svg>") == std::string::npos) {
    std::ifstream in(log);
    std::stringstream messages;
    messages << in.rdbuf();
    std::fprintf(stderr, "note: gnuplot failed to draw the chart of %s:\n%s\n", script.c_str(),
                 messages.str().c_str());
    return "";
  }
  return svg.substr(start);  // without the XML prolog and DOCTYPE, to inline in HTML
}

bool render_png(const std::string& script, const std::string& png) {
  const auto [image, ok] = run_gnuplot(script);
  if (!ok || image.rfind("\x89PNG", 0) != 0) {
    std::fprintf(stderr, "note: gnuplot failed to draw %s; its script is %s\n", png.c_str(),
                 script.c_str());
    return false;
  }
  write_file_atomic(png, image);
  return true;
}

std::vector<std::string> plot_run(const std::string& metrics_jsonl, const std::string& out_dir) {
  PlotData d;
  read_metrics(metrics_jsonl, d);
  const fs::path dir(out_dir);
  const std::string train_dat = (dir / "plot_train.dat").string(),
                    eval_dat = (dir / "plot_eval.dat").string(),
                    logit_dat = (dir / "plot_logits.dat").string();
  write_file_atomic(train_dat, d.train.str());
  write_file_atomic(eval_dat, d.eval.str());
  write_file_atomic(logit_dat, d.logits.str());
  std::vector<std::string> written;
  if (d.train_rows == 0) return written;
  if (!have_gnuplot()) {
    std::fprintf(stderr, "note: gnuplot not found; install gnuplot-nox to draw %s/*.png\n",
                 out_dir.c_str());
    return written;
  }
  std::ostringstream loss;
  loss << kTerminal << "set grid\nset key top right\nset xlabel 'step'\n"
       << "set title 'Loss (nats per token)'\nset ylabel 'cross-entropy'\n"
       << "plot '" << train_dat << "' using 1:2 with lines lw 1.5 title 'train'";
  if (d.eval_rows)
    loss << ", '" << eval_dat << "' using 1:2 with linespoints lw 2 pt 7 ps 0.8 title 'validation'";
  loss << "\n";
  const std::string loss_gp = (dir / "plot_loss.gp").string();
  const std::string loss_png = (dir / "loss.png").string();
  write_file_atomic(loss_gp, loss.str());
  if (render_png(loss_gp, loss_png)) written.push_back(loss_png);
  if (d.n_layer == 0) return written;

  std::ostringstream logits;
  logits << kTerminal << "set grid\nset key top right\nset xlabel 'step'\n"
         << "set title 'Largest pre-softmax attention logit per layer (max over heads)'\n"
         << "set ylabel 'max logit'\nplot ";
  for (int l = 0; l < d.n_layer; ++l)
    logits << (l ? ", " : "") << "'" << logit_dat << "' using 1:" << (l + 2)
           << " with lines lw 1.5 title 'layer " << l << "'";
  logits << "\n";
  const std::string logit_gp = (dir / "plot_max_logits.gp").string();
  const std::string logit_png = (dir / "max_logits.png").string();
  write_file_atomic(logit_gp, logits.str());
  if (render_png(logit_gp, logit_png)) written.push_back(logit_png);
  return written;
}

}  // namespace lsgpt
