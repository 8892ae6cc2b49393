// Stability statistics of training runs (definitions in stability_summary.h).
#include "train/stability_summary.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <sstream>

namespace lsgpt {

namespace {

using nlohmann::json;

// The median of a non-empty list (sorted in place).
double median(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// loss_t - m when record t is a spike step (given finite loss); NaN otherwise.
double spike_excess(const std::vector<TrainRecord>& train, size_t t, const SpikeOptions& o) {
  std::vector<double> prev;
  for (size_t i = t >= size_t(o.window) ? t - o.window : 0; i < t; ++i)
    if (std::isfinite(train[i].loss)) prev.push_back(train[i].loss);
  if (int(prev.size()) < o.min_finite) return NAN;
  const double m = median(prev);
  std::vector<double> dev;
  for (const double x : prev) dev.push_back(std::fabs(x - m));
  const double mad = median(dev);
  const double excess = train[t].loss - m;
  return excess > std::max(o.min_excess, o.mad_factor * 1.4826 * mad) ? excess : NAN;
}

bool finite_loss(const TrainRecord& t) { return !t.skipped && std::isfinite(t.loss); }

const EvalRecord* final_eval(const RunMetrics& run) {
  const EvalRecord* f = nullptr;
  for (const EvalRecord& e : run.eval)
    if (e.final) f = &e;
  return f;
}

// Why the run diverged; empty when it did not.
std::string divergence(const RunMetrics& run, const EvalRecord* fin, double margin) {
  if (!fin) {
    const bool ended_bad = !run.train.empty() && run.train.back().skipped;
    return ended_bad ? "ended on non-finite values" : "";
  }
  if (!std::isfinite(fin->val_loss)) return "final validation loss is non-finite";
  double best = INFINITY;
  for (const EvalRecord& e : run.eval)
    if (&e != fin && std::isfinite(e.val_loss)) best = std::min(best, e.val_loss);
  if (fin->val_loss > best + margin) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "final validation loss %.4g > best earlier %.4g + %g",
                  fin->val_loss, best, margin);
    return buf;
  }
  return "";
}

void max_logits(const RunMetrics& run, RunStability& s) {
  s.max_logit_per_layer.assign(run.n_layer, NAN);
  s.peak_max_logit = NAN;
  for (const TrainRecord& t : run.train)
    for (size_t l = 0; l < t.max_logit.size(); ++l)
      for (const double h : t.max_logit[l]) {
        if (!std::isfinite(h)) continue;
        double& layer = s.max_logit_per_layer[l];
        if (!(h <= layer)) layer = h;
        if (!(h <= s.peak_max_logit)) s.peak_max_logit = h, s.peak_max_logit_step = t.step;
      }
}

double median_speed(const RunMetrics& run, size_t skip) {
  const size_t from = run.train.size() > skip ? skip : 0;
  std::vector<double> v;
  for (size_t i = from; i < run.train.size(); ++i)
    if (std::isfinite(run.train[i].tokens_per_s)) v.push_back(run.train[i].tokens_per_s);
  return v.empty() ? NAN : median(v);
}

// Intermediate evaluations read the same validation batches each time; the
// final one usually reads the whole file, a different sample whose loss is
// not comparable (on pg-books the first batches are 0.26 nats easier), so it
// counts only in a run that has no intermediate evaluation.
void time_to_target(const RunMetrics& run, double target, RunStability& s) {
  const bool has_intermediate = std::any_of(run.eval.begin(), run.eval.end(),
                                            [](const EvalRecord& e) { return !e.final; });
  for (const EvalRecord& e : run.eval)
    if ((!e.final || !has_intermediate) && std::isfinite(e.val_loss) && e.val_loss <= target) {
      s.target_reached = true, s.target_step = e.step, s.target_seconds = e.train_seconds;
      return;
    }
}

const json* find_path(const json& config, const char* section, const char* key) {
  if (!config.is_object() || !config.contains(section) || !config[section].is_object())
    return nullptr;
  const json& sec = config[section];
  return sec.contains(key) ? &sec[key] : nullptr;
}

double config_number(const json& config, const char* section, const char* key) {
  const json* v = find_path(config, section, key);
  return v && v->is_number() ? v->get<double>() : NAN;
}

std::string attention_kind(const json& config) {
  const json* nl = find_path(config, "model", "n_local");
  const double heads = config_number(config, "model", "n_head");
  if (!nl || !std::isfinite(heads)) return "?";
  std::vector<long> per_layer;
  for (const json& v : nl->is_array() ? *nl : json::array({*nl}))
    if (v.is_number()) per_layer.push_back(v.get<long>());
  if (std::all_of(per_layer.begin(), per_layer.end(), [](long n) { return n == 0; })) return "MHSA";
  std::string counts;
  const bool same = std::all_of(per_layer.begin(), per_layer.end(),
                                [&](long n) { return n == per_layer[0]; });
  for (size_t l = 0; l < (same ? 1 : per_layer.size()); ++l)
    counts.append(l ? "," : "").append(std::to_string(per_layer[l]));
  const double w = config_number(config, "model", "window");
  return "LS " + counts + "/" + std::to_string(long(heads)) + " w=" +
         (std::isfinite(w) ? std::to_string(long(w)) : "?");
}

// 1e-4 rather than 0.0001: coefficients are quoted that way.
std::string short_scientific(double v) {
  const int e = int(std::floor(std::log10(std::fabs(v))));
  const double mantissa = v / std::pow(10.0, e);
  char buf[48];
  if (std::fabs(mantissa - std::round(mantissa)) < 1e-9)
    std::snprintf(buf, sizeof buf, "%.0fe%d", mantissa, e);
  else
    std::snprintf(buf, sizeof buf, "%.3ge%d", mantissa, e);
  return buf;
}

std::string stabiliser_list(const json& config) {
  if (!config.is_object()) return "?";
  std::vector<std::string> on;
  const json* qk = find_path(config, "model", "qk_norm");
  if (qk && qk->is_boolean() && qk->get<bool>()) on.push_back("qk-norm");
  const double z = config_number(config, "model", "z_loss");
  if (std::isfinite(z) && z != 0) on.push_back("z-loss " + short_scientific(z));
  const json* ada = find_path(config, "train", "adagc");
  if (ada && ada->is_boolean() && ada->get<bool>()) on.push_back("AdaGC");
  std::string out;
  for (const std::string& s : on) out.append(out.empty() ? "" : ", ").append(s);
  return out.empty() ? "-" : out;
}

bool path_like(const std::string& key, const json& value) {
  for (const char* end : {"_data", "_dir", "_path", "_file"}) {
    const std::string e = end;
    if (key.size() >= e.size() && key.compare(key.size() - e.size(), e.size(), e) == 0) return true;
  }
  return value.is_string() && value.get<std::string>().find('/') != std::string::npos;
}

// config.json without what differs between seeds of one setting.
json group_key(const json& config) {
  if (!config.is_object()) return nullptr;
  std::function<json(const json&)> strip = [&](const json& j) {
    json out = json::object();
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (path_like(it.key(), it.value())) continue;
      out[it.key()] = it.value().is_object() ? strip(it.value()) : it.value();
    }
    return out;
  };
  json key = strip(config);
  if (key.contains("train") && key["train"].is_object()) key["train"].erase("seed");
  return key;
}

void settings(const RunMetrics& run, RunStability& s) {
  const json& c = run.config;
  s.attention = attention_kind(c);
  s.stabilisers = stabiliser_list(c);
  s.lr = config_number(c, "train", "lr");
  s.seed = config_number(c, "train", "seed");
  const double steps = config_number(c, "train", "steps");
  s.steps = std::isfinite(steps) ? long(steps) : s.last_step;
  s.group_config = group_key(c);
}

}  // namespace

std::vector<SpikeEvent> find_spikes(const std::vector<TrainRecord>& train, const SpikeOptions& o) {
  std::vector<SpikeEvent> events;
  long last_spike = 0;
  for (size_t t = 0; t < train.size(); ++t) {
    const bool nonfinite = !finite_loss(train[t]);
    const double excess = nonfinite ? NAN : spike_excess(train, t, o);
    if (!nonfinite && !std::isfinite(excess)) continue;
    const long step = train[t].step;
    if (events.empty() || step - last_spike >= o.merge_gap) events.push_back({step, 0, 0, NAN});
    SpikeEvent& e = events.back();
    ++e.spike_steps;
    e.nonfinite_steps += nonfinite;
    if (!nonfinite && !(excess <= e.max_excess)) e.max_excess = excess;
    last_spike = step;
  }
  return events;
}

RunStability summarise_run(const RunMetrics& run, const StabilityOptions& o) {
  RunStability s;
  s.dir = run.dir;
  const std::filesystem::path dir = std::filesystem::path(run.dir).lexically_normal();
  s.name = (dir.has_filename() ? dir : dir.parent_path()).filename().string();
  s.last_step = run.train.empty() ? 0 : run.train.back().step;
  settings(run, s);
  const EvalRecord* fin = final_eval(run);
  s.final_val_loss = fin ? fin->val_loss : NAN;
  s.final_val_ppl = !fin                           ? NAN
                    : std::isfinite(fin->val_ppl) ? fin->val_ppl
                                                  : std::exp(fin->val_loss);
  s.spikes = find_spikes(run.train, o.spikes);
  s.max_spike_excess = NAN;
  for (const SpikeEvent& e : s.spikes)
    if (!(e.max_excess <= s.max_spike_excess) && std::isfinite(e.max_excess))
      s.max_spike_excess = e.max_excess;
  s.diverged_reason = divergence(run, fin, o.divergence_margin);
  s.diverged = !s.diverged_reason.empty();
  s.incomplete = !fin && !s.diverged;
  max_logits(run, s);
  s.median_tokens_per_s = median_speed(run, o.speed_skip);
  s.target_seconds = NAN;
  if (o.target_loss) time_to_target(run, *o.target_loss, s);
  return s;
}

std::vector<StabilityGroup> group_runs(const std::vector<RunStability>& runs) {
  std::vector<StabilityGroup> groups;
  std::vector<const json*> keys;
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunStability& r = runs[i];
    size_t g = 0;
    while (g < keys.size() && (r.group_config.is_null() || *keys[g] != r.group_config)) ++g;
    if (g == keys.size()) {
      keys.push_back(&r.group_config);
      groups.push_back({r.attention, r.stabilisers, r.lr, {}, NAN, NAN, NAN, 0, 0});
    }
    groups[g].runs.push_back(i);
  }
  for (StabilityGroup& g : groups) {
    double sum = 0;
    long n = 0;
    for (const size_t i : g.runs) {
      const RunStability& r = runs[i];
      g.spike_events += long(r.spikes.size());
      g.diverged += r.diverged;
      if (!std::isfinite(r.final_val_loss)) continue;
      sum += r.final_val_loss, ++n;
      if (!(r.final_val_loss >= g.min_final_val_loss)) g.min_final_val_loss = r.final_val_loss;
      if (!(r.final_val_loss <= g.max_final_val_loss)) g.max_final_val_loss = r.final_val_loss;
    }
    g.mean_final_val_loss = n ? sum / n : NAN;
  }
  return groups;
}

std::string stability_definitions(const StabilityOptions& o) {
  const SpikeOptions& s = o.spikes;
  std::ostringstream d;
  d << "A step t with a finite loss is a spike step when at least " << s.min_finite
    << " of the previous " << s.window << " recorded steps have finite losses and loss_t - m > max("
    << s.min_excess << " nats, " << s.mad_factor << " * 1.4826 * MAD), m and MAD the median and "
    << "median absolute deviation of those finite losses; a non-finite (skipped) step is also a "
       "spike step; spike steps fewer than " << s.merge_gap << " steps apart form one event "
       "(reported by its first step). A run diverged when it ended on non-finite values (last "
       "training step skipped, no final evaluation), its final validation loss is non-finite, "
       "or that loss exceeds the best earlier validation loss by more than "
    << o.divergence_margin << " nat; it is incomplete when it has no final evaluation and did "
       "not diverge. Throughput is the median tokens/s after the first " << o.speed_skip
    << " recorded steps. ";
  if (o.target_loss)
    d << "Target validation loss: " << *o.target_loss
      << " (first intermediate evaluation at or below it; the final evaluation only counts in "
         "runs without intermediate ones, as it reads other validation batches).";
  else
    d << "No target validation loss given.";
  return d.str();
}

}  // namespace lsgpt
