#include "train/run_metrics.h"

#include <sys/stat.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/checkpoint.h"

namespace lsgpt {

namespace {

using nlohmann::json;

double number_or_nan(const json& r, const char* key) {
  const auto it = r.find(key);
  if (it == r.end() || !it->is_number()) return NAN;
  return it->get<double>();
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("report: cannot read ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("report: cannot read ", path);
  return ss.str();
}

std::vector<std::vector<double>> read_max_logit(const json& r) {
  std::vector<std::vector<double>> layers;
  const auto it = r.find("max_logit");
  if (it == r.end() || !it->is_array()) return layers;
  for (const json& layer : *it) {
    std::vector<double> heads;
    if (layer.is_array())
      for (const json& h : layer) heads.push_back(h.is_number() ? h.get<double>() : NAN);
    layers.push_back(std::move(heads));
  }
  return layers;
}

// A damaged line is left out, never an exception: r.value("skipped", false)
// threw on "skipped": "yes" and ended the whole report, and get<long>() of a
// step such as 1e300 is undefined.
bool well_typed(const json& r) {
  if (!r.is_object() || !r.contains("type") || !r.contains("step")) return false;
  const json& step = r["step"];
  if (!step.is_number_integer() || (step.is_number_unsigned() && step.get<uint64_t>() > LONG_MAX))
    return false;
  const auto skipped = r.find("skipped");
  return skipped == r.end() || skipped->is_boolean();
}

// One parsed line; false when it is not a record this reader knows.
bool add_record(const json& r, RunMetrics& run) {
  if (!well_typed(r)) return false;
  if (r["type"] == "train") {
    TrainRecord t;
    t.step = r["step"].get<long>();
    t.loss = number_or_nan(r, "loss");
    t.lr = number_or_nan(r, "lr");
    t.grad_norm = number_or_nan(r, "grad_norm");
    t.tokens_per_s = number_or_nan(r, "tokens_per_s");
    t.train_seconds = number_or_nan(r, "train_seconds");
    t.skipped = r.value("skipped", false) || !std::isfinite(t.loss);
    t.max_logit = read_max_logit(r);
    run.n_layer = std::max(run.n_layer, int(t.max_logit.size()));
    for (const auto& heads : t.max_logit) run.n_head = std::max(run.n_head, int(heads.size()));
    run.train.push_back(std::move(t));
    return true;
  }
  if (r["type"] == "eval") {
    const auto fin = r.find("final");
    run.eval.push_back({r["step"].get<long>(), number_or_nan(r, "val_loss"),
                        number_or_nan(r, "val_ppl"), number_or_nan(r, "train_seconds"),
                        fin != r.end() && fin->is_boolean() && fin->get<bool>()});
    return true;
  }
  return false;
}

void read_metrics(const std::string& path, RunMetrics& run) {
  const std::string text = read_whole(path);
  if (text.empty()) {
    run.notes.push_back("metrics.jsonl is empty: no steps recorded yet");
    return;
  }
  long line_no = 0, bad = 0, first_bad = 0;
  for (size_t start = 0; start < text.size();) {
    const size_t nl = text.find('\n', start);
    const bool cut = nl == std::string::npos;
    const std::string line = text.substr(start, cut ? std::string::npos : nl - start);
    start = cut ? text.size() : nl + 1;
    ++line_no;
    if (line.empty()) continue;
    const json r = json::parse(line, nullptr, false);
    if (cut && r.is_discarded()) {
      run.notes.push_back("the last line of metrics.jsonl is cut off mid-line (" +
                          std::to_string(line.size()) + " bytes); it is left out");
      break;
    }
    if (r.is_discarded() || !add_record(r, run)) {
      if (bad++ == 0) first_bad = line_no;
    }
  }
  if (bad > 0)
    run.notes.push_back(std::to_string(bad) + " line(s) of metrics.jsonl are not training or "
                        "evaluation records and are left out (the first is line " +
                        std::to_string(first_bad) + ")");
}

}  // namespace

RunMetrics read_run_metrics(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) fail("report: no run directory ", dir);
  if (!S_ISDIR(st.st_mode)) fail("report: ", dir, " is not a run directory");
  const std::string metrics = dir + "/metrics.jsonl";
  if (::stat(metrics.c_str(), &st) != 0)
    fail("report: ", dir, " has no metrics.jsonl (is it a run directory of lsgpt train?)");
  // A directory reads as empty and was reported as "no steps recorded yet".
  if (!S_ISREG(st.st_mode)) fail("report: ", metrics, " is not a regular file");
  RunMetrics run;
  run.dir = dir;
  read_metrics(metrics, run);
  if (run.train.empty()) run.notes.push_back("no training steps recorded");
  long nonfinite = 0;
  for (const TrainRecord& t : run.train)
    for (const auto& heads : t.max_logit)
      for (const double h : heads) nonfinite += !std::isfinite(h);
  if (nonfinite > 0)
    run.notes.push_back(std::to_string(nonfinite) + " max-logit value(s) are null or non-finite "
                        "(left out of the charts)");
  const std::string config = dir + "/config.json", checkpoint = dir + "/checkpoint.ckpt";
  if (::stat(config.c_str(), &st) != 0 && ::stat(checkpoint.c_str(), &st) == 0) {
    try {
      const Checkpoint ck = load_checkpoint(checkpoint);
      run.config = json{{"model", ck.model.to_json()}, {"train", ck.train}};
      run.notes.push_back("no config.json: settings taken from checkpoint.ckpt");
    } catch (const Error& e) {
      run.notes.push_back(std::string("no config.json, and checkpoint.ckpt is unreadable: ") +
                          e.what());
    }
  } else if (::stat(config.c_str(), &st) != 0) {
    run.notes.push_back("no config.json: settings unknown");
  } else {
    run.config = json::parse(read_whole(config), nullptr, false);
    if (run.config.is_discarded() || !run.config.is_object()) {
      run.config = nullptr;
      run.notes.push_back("config.json is not a JSON object: settings unknown");
    }
  }
  return run;
}

}  // namespace lsgpt
