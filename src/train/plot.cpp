#include "train/plot.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lsgpt {
namespace fs = std::filesystem;

namespace {
bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }
}  // namespace

std::vector<std::string> plot_run(const std::string& metrics_jsonl, const std::string& out_dir) {
  std::ifstream in(metrics_jsonl);
  if (!in) fail("cannot read metrics file '", metrics_jsonl, "'");
  const fs::path dir(out_dir);
  const fs::path train_dat = dir / "plot_train.dat", eval_dat = dir / "plot_eval.dat",
                 logit_dat = dir / "plot_logits.dat";
  std::ofstream train(train_dat), eval(eval_dat), logits(logit_dat);
  int n_layer = 0;
  long train_rows = 0, eval_rows = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.contains("type")) continue;
    if (r["type"] == "train" && r.contains("loss") && r["loss"].is_number()) {
      train << r["step"].get<long>() << ' ' << r["loss"].get<double>() << '\n';
      ++train_rows;
      if (r.contains("max_logit")) {
        const auto& ml = r["max_logit"];
        n_layer = int(ml.size());
        logits << r["step"].get<long>();
        for (const auto& layer : ml) {
          double m = -1e30;
          for (const auto& h : layer)
            if (h.is_number()) m = std::max(m, h.get<double>());
          logits << ' ' << m;
        }
        logits << '\n';
      }
    } else if (r["type"] == "eval" && r.contains("val_loss") && r["val_loss"].is_number()) {
      eval << r["step"].get<long>() << ' ' << r["val_loss"].get<double>() << '\n';
      ++eval_rows;
    }
  }
  train.close(), eval.close(), logits.close();
  std::vector<std::string> written;
  if (train_rows == 0) return written;
  if (!have_gnuplot()) {
    std::fprintf(stderr, "note: gnuplot not found; install gnuplot-nox to draw %s/*.png\n",
                 out_dir.c_str());
    return written;
  }
  const fs::path loss_png = dir / "loss.png", logit_png = dir / "max_logits.png";
  const fs::path script = dir / "plot.gp";
  {
    std::ofstream gp(script);
    gp << "set terminal pngcairo size 900,540 enhanced font 'sans,10'\n"
       << "set grid\nset key top right\nset xlabel 'step'\n"
       << "set output '" << loss_png.string() << "'\n"
       << "set title 'Loss (nats per token)'\nset ylabel 'cross-entropy'\n"
       << "plot '" << train_dat.string() << "' using 1:2 with lines lw 1.5 title 'train'";
    if (eval_rows)
      gp << ", '" << eval_dat.string()
         << "' using 1:2 with linespoints lw 2 pt 7 ps 0.8 title 'validation'";
    gp << "\n";
    if (n_layer > 0) {
      gp << "set output '" << logit_png.string() << "'\n"
         << "set title 'Largest pre-softmax attention logit per layer (max over heads)'\n"
         << "set ylabel 'max logit'\nplot ";
      for (int l = 0; l < n_layer; ++l)
        gp << (l ? ", " : "") << "'" << logit_dat.string() << "' using 1:" << (l + 2)
           << " with lines lw 1.5 title 'layer " << l << "'";
      gp << "\n";
    }
  }
  const std::string cmd = "gnuplot '" + script.string() + "' 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "note: gnuplot failed; the data is in %s\n", dir.c_str());
    return written;
  }
  written.push_back(loss_png.string());
  if (n_layer > 0) written.push_back(logit_png.string());
  return written;
}

}  // namespace lsgpt
