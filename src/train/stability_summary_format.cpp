// The stability summary as Markdown tables and as JSON.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "train/stability_summary.h"

namespace lsgpt {

namespace {

using nlohmann::json;

std::string num(double v, const char* format = "%.4g") {
  if (!std::isfinite(v)) return "n/a";
  if (std::fabs(v) >= 1e7) format = "%.3e";  // a diverged run's logits: 36 digits say nothing
  char buf[48];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Markdown cells hold no '|' or line breaks from a run's name.
std::string cell(std::string s) {
  for (char& c : s)
    if (c == '|' || c == '\n' || c == '\r') c = '_';
  return s;
}

std::string spikes_cell(const RunStability& r) {
  std::string s = std::to_string(r.spikes.size());
  if (r.spikes.empty()) return s;
  s += " (at";
  for (size_t i = 0; i < r.spikes.size(); ++i)
    s.append(i ? ", " : " ").append(std::to_string(r.spikes[i].step));
  return s + "; max excess " + num(r.max_spike_excess, "%.3f") + ")";
}

std::string target_cells(const RunStability& r, const StabilityOptions& o) {
  if (!o.target_loss) return "";
  if (!r.target_reached) return " not reached | n/a |";
  std::string cells = " ";
  return cells.append(std::to_string(r.target_step))
      .append(" | ")
      .append(num(r.target_seconds, "%.1f"))
      .append(" |");
}

std::string runs_table(const std::vector<RunStability>& runs, const StabilityOptions& o) {
  const int columns = o.target_loss ? 13 : 11;
  std::ostringstream out;
  out << "| run | attention | stabilisers | lr | seed | final val loss | val ppl | spikes | "
         "diverged | peak max logit (step) | median tok/s |"
      << (o.target_loss ? " steps to target | train s to target |" : "") << "\n|";
  for (int i = 0; i < columns; ++i) out << "---|";
  out << "\n";
  for (const RunStability& r : runs) {
    const std::string state = r.diverged ? "yes (" + r.diverged_reason + ")"
                              : r.incomplete ? "no (incomplete)" : "no";
    out << "| " << cell(r.name) << " | " << r.attention << " | " << r.stabilisers << " | "
        << num(r.lr, "%g") << " | " << num(r.seed, "%.0f") << " | "
        << num(r.final_val_loss, "%.4f") << " | " << num(r.final_val_ppl, "%.2f") << " | "
        << spikes_cell(r) << " | " << state << " | " << num(r.peak_max_logit, "%.2f")
        << (std::isfinite(r.peak_max_logit) ? " (" + std::to_string(r.peak_max_logit_step) + ")"
                                            : "")
        << " | " << num(r.median_tokens_per_s, "%.0f") << " |" << target_cells(r, o) << "\n";
  }
  return out.str();
}

std::string logit_table(const std::vector<RunStability>& runs) {
  size_t layers = 0;
  for (const RunStability& r : runs) layers = std::max(layers, r.max_logit_per_layer.size());
  std::ostringstream md;
  md << "| run |";
  for (size_t l = 0; l < layers; ++l) md << " layer " << l << " |";
  md << "\n|---|";
  for (size_t l = 0; l < layers; ++l) md << "---|";
  md << "\n";
  for (const RunStability& r : runs) {
    md << "| " << cell(r.name) << " |";
    for (size_t l = 0; l < layers; ++l)
      md << " "
         << (l < r.max_logit_per_layer.size() ? num(r.max_logit_per_layer[l], "%.2f") : "n/a")
         << " |";
    md << "\n";
  }
  return md.str();
}

std::string group_table(const std::vector<RunStability>& runs,
                        const std::vector<StabilityGroup>& groups) {
  std::ostringstream md;
  md << "| attention | stabilisers | lr | runs | mean final val loss | min | max | spike events | "
        "diverged |\n|---|---|---|---|---|---|---|---|---|\n";
  for (const StabilityGroup& g : groups) {
    std::string names;
    for (const size_t i : g.runs) names.append(names.empty() ? "" : ", ").append(cell(runs[i].name));
    md << "| " << g.attention << " | " << g.stabilisers << " | " << num(g.lr, "%g") << " | "
       << g.runs.size() << " (" << names << ") | " << num(g.mean_final_val_loss, "%.4f") << " | "
       << num(g.min_final_val_loss, "%.4f") << " | " << num(g.max_final_val_loss, "%.4f")
       << " | " << g.spike_events << " | " << g.diverged << "/" << g.runs.size() << " |\n";
  }
  return md.str();
}

// The learning-rate sweep at a glance: one row per setting, one column per
// learning rate, the mean final validation loss of the seeds ("div" marks a
// group with a diverged run). Empty when the runs share one learning rate.
std::string lr_table(const std::vector<StabilityGroup>& groups) {
  std::vector<double> lrs;
  std::vector<std::pair<std::string, std::string>> settings;
  for (const StabilityGroup& g : groups) {
    if (std::find(lrs.begin(), lrs.end(), g.lr) == lrs.end()) lrs.push_back(g.lr);
    const std::pair<std::string, std::string> key{g.attention, g.stabilisers};
    if (std::find(settings.begin(), settings.end(), key) == settings.end()) settings.push_back(key);
  }
  if (lrs.size() < 2) return "";
  std::sort(lrs.begin(), lrs.end());
  std::ostringstream md;
  md << "| attention | stabilisers |";
  for (const double lr : lrs) md << " lr " << num(lr, "%g") << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < lrs.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& setting : settings) {  // not a structured binding: lambdas capture it
    md << "| " << setting.first << " | " << setting.second << " |";
    for (const double lr : lrs) {
      const auto g = std::find_if(groups.begin(), groups.end(), [&](const StabilityGroup& x) {
        return x.attention == setting.first && x.stabilisers == setting.second && x.lr == lr;
      });
      if (g == groups.end()) md << " - |";
      else md << " " << num(g->mean_final_val_loss, "%.4f") << (g->diverged ? " div" : "") << " |";
    }
    md << "\n";
  }
  return md.str();
}

// JSON has no NaN: missing values are null.
json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json run_json(const RunStability& r, const StabilityOptions& o) {
  json spikes = json::array();
  for (const SpikeEvent& e : r.spikes)
    spikes.push_back({{"step", e.step}, {"spike_steps", e.spike_steps},
                      {"nonfinite_steps", e.nonfinite_steps},
                      {"max_excess", number_or_null(e.max_excess)}});
  json logits = json::array();
  for (const double v : r.max_logit_per_layer) logits.push_back(number_or_null(v));
  json j{{"name", r.name}, {"dir", r.dir}, {"attention", r.attention},
         {"stabilisers", r.stabilisers}, {"lr", number_or_null(r.lr)},
         {"seed", std::isfinite(r.seed) ? json(std::llround(r.seed)) : json(nullptr)},
         {"steps", r.steps}, {"last_step", r.last_step},
         {"final_val_loss", number_or_null(r.final_val_loss)},
         {"final_val_ppl", number_or_null(r.final_val_ppl)}, {"spike_events", spikes},
         {"max_spike_excess", number_or_null(r.max_spike_excess)}, {"diverged", r.diverged},
         {"diverged_reason", r.diverged_reason}, {"incomplete", r.incomplete},
         {"max_logit_per_layer", logits}, {"peak_max_logit", number_or_null(r.peak_max_logit)},
         {"peak_max_logit_step",
          std::isfinite(r.peak_max_logit) ? json(r.peak_max_logit_step) : json(nullptr)},
         {"median_tokens_per_s", number_or_null(r.median_tokens_per_s)}};
  if (o.target_loss)
    j["target"] = r.target_reached
                      ? json{{"reached", true}, {"step", r.target_step},
                             {"train_seconds", number_or_null(r.target_seconds)}}
                      : json{{"reached", false}};
  return j;
}

json group_json(const StabilityGroup& g, const std::vector<RunStability>& runs) {
  json names = json::array();
  for (const size_t i : g.runs) names.push_back(runs[i].name);
  return {{"attention", g.attention}, {"stabilisers", g.stabilisers}, {"lr", number_or_null(g.lr)},
          {"runs", names}, {"mean_final_val_loss", number_or_null(g.mean_final_val_loss)},
          {"min_final_val_loss", number_or_null(g.min_final_val_loss)},
          {"max_final_val_loss", number_or_null(g.max_final_val_loss)},
          {"spike_events", g.spike_events}, {"diverged", g.diverged}};
}

}  // namespace

std::string summary_markdown(const std::vector<RunStability>& runs,
                             const std::vector<StabilityGroup>& groups,
                             const StabilityOptions& o) {
  std::ostringstream md;
  md << "# Stability summary\n\n## Runs\n\n" << runs_table(runs, o)
     << "\n## Largest attention logit per layer (max over steps and heads)\n\n"
     << logit_table(runs) << "\n## Settings (runs differing only in seed and paths)\n\n"
     << group_table(runs, groups);
  const std::string by_lr = lr_table(groups);
  if (!by_lr.empty())
    md << "\n## Mean final validation loss by learning rate\n\n" << by_lr;
  md << "\n" << stability_definitions(o) << "\n";
  return md.str();
}

json summary_json(const std::vector<RunStability>& runs, const std::vector<StabilityGroup>& groups,
                  const StabilityOptions& o) {
  const SpikeOptions& s = o.spikes;
  json j{{"definitions", stability_definitions(o)},
         {"spike_options", {{"window", s.window}, {"min_finite", s.min_finite},
                            {"min_excess", s.min_excess}, {"mad_factor", s.mad_factor},
                            {"merge_gap", s.merge_gap}}},
         {"divergence_margin", o.divergence_margin},
         {"target_loss", o.target_loss ? json(*o.target_loss) : json(nullptr)},
         {"runs", json::array()}, {"groups", json::array()}};
  for (const RunStability& r : runs) j["runs"].push_back(run_json(r, o));
  for (const StabilityGroup& g : groups) j["groups"].push_back(group_json(g, runs));
  return j;
}

}  // namespace lsgpt
