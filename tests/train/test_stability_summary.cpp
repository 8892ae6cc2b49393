// Stability summary: spikes, divergence, peak logits, throughput, time to
// target and setting groups of synthetic runs written as the trainer writes
// them, checked against values worked out by hand; and `lsgpt report
// --summary/--summary-json/--svg-dir` writing its files.
#include "train/stability_summary.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "data/data_test_support.h"
#include "data/token_file.h"
#include "io/io_test_support.h"
#include "train/run_metrics.h"

namespace lsgpt {
namespace {
namespace test_stability_summary {

using data_testing::read_file;
using data_testing::run_lsgpt;
using data_testing::ScratchDir;
using data_testing::write_file;
using nlohmann::json;
namespace fs = std::filesystem;

// A run's metrics.jsonl built line by line.
struct RunWriter {
  std::string text;
  void train(long step, double loss, double tokens_per_s = 1000, json max_logit = json::array(),
             double train_seconds = NAN) {
    json r{{"type", "train"}, {"step", step}, {"lr", 1e-3}, {"grad_norm", 0.5},
           {"tokens_per_s", tokens_per_s}, {"max_logit", max_logit}};
    if (std::isfinite(loss)) r["loss"] = loss;
    else r["loss"] = nullptr, r["skipped"] = true;
    if (std::isfinite(train_seconds)) r["train_seconds"] = train_seconds;
    text += r.dump() + "\n";
  }
  void eval(long step, double val_loss, bool final = false, double train_seconds = NAN) {
    json r{{"type", "eval"}, {"step", step}, {"val_tokens", 4096}};
    if (std::isfinite(val_loss)) r["val_loss"] = val_loss, r["val_ppl"] = std::exp(val_loss);
    else r["val_loss"] = nullptr, r["val_ppl"] = nullptr;
    if (std::isfinite(train_seconds)) r["train_seconds"] = train_seconds;
    if (final) r["final"] = true;
    text += r.dump() + "\n";
  }
};

json config(std::vector<int> n_local, double lr, int seed, const std::string& out_dir,
            bool adagc = false, double z_loss = 0, bool qk_norm = false) {
  json model{{"n_layer", n_local.size()}, {"n_head", 4}, {"n_local", n_local}, {"window", 64}};
  if (z_loss != 0) model["z_loss"] = z_loss;
  if (qk_norm) model["qk_norm"] = true;
  return {{"model", model},
          {"train", {{"lr", lr}, {"seed", seed}, {"steps", 300}, {"adagc", adagc},
                     {"out_dir", out_dir}, {"train_data", out_dir + "/../train.bin"},
                     {"valid_data", out_dir + "/../valid.bin"}}}};
}

std::string write_run(const ScratchDir& dir, const std::string& name, const RunWriter& w,
                      const json& cfg = nullptr) {
  const std::string d = dir.file(name);
  fs::create_directories(d);
  write_file(d + "/metrics.jsonl", w.text);
  if (!cfg.is_null()) write_file(d + "/config.json", cfg.dump(2));
  return d;
}

RunStability summarise(const std::string& dir, std::optional<double> target = std::nullopt) {
  StabilityOptions o;
  o.target_loss = target;
  return summarise_run(read_run_metrics(dir), o);
}

// 3 +- 0.01 alternating: median 3.0 (well, 2.99/3.01 halves), MAD 0.01, so
// the 0.3-nat floor decides; `bump` adds to chosen steps.
double flat(long step) { return step % 2 ? 3.01 : 2.99; }

// Lines of the right shape but wrong types are damage to note, not a reason to
// fail the whole report: "skipped": "yes" used to throw a JSON type error.
TEST(RunMetrics, WronglyTypedLinesAreLeftOutWithANote) {
  ScratchDir dir;
  RunWriter w;
  w.train(1, 3.0);
  w.text += R"({"type":"train","step":2,"loss":2.9,"skipped":"yes"})" "\n";
  w.text += R"({"type":"train","step":1e300,"loss":2.8})" "\n";
  w.text += R"({"type":"eval","step":2.5,"val_loss":2.7})" "\n";
  w.text += R"({"type":"train","step":18446744073709551615,"loss":2.6})" "\n";
  w.train(3, 2.5);
  w.eval(3, 2.4, true);
  const RunMetrics run = read_run_metrics(write_run(dir, "typed", w));
  ASSERT_EQ(run.train.size(), 2u);
  EXPECT_EQ(run.train[0].step, 1);
  EXPECT_EQ(run.train[1].step, 3);
  ASSERT_EQ(run.eval.size(), 1u);
  EXPECT_EQ(run.eval[0].step, 3);
  const bool noted = std::any_of(run.notes.begin(), run.notes.end(), [](const std::string& n) {
    return n.find("4 line(s) of metrics.jsonl are not training or evaluation records") !=
               std::string::npos &&
           n.find("the first is line 2") != std::string::npos;
  });
  EXPECT_TRUE(noted) << (run.notes.empty() ? "no notes" : run.notes[0]);
}

TEST(StabilitySummary, SmoothNoisyDecreasingLossHasNoSpikes) {
  ScratchDir dir;
  std::mt19937_64 rng(11);
  std::normal_distribution<double> noise(0.0, 0.05);
  RunWriter w;
  for (long s = 1; s <= 400; ++s) w.train(s, 2.0 + 5.0 * std::exp(-s / 80.0) + noise(rng));
  w.eval(400, 2.1, true);
  const RunStability r = summarise(write_run(dir, "smooth", w));
  EXPECT_TRUE(r.spikes.empty()) << r.spikes[0].step;
  EXPECT_TRUE(std::isnan(r.max_spike_excess));
  EXPECT_FALSE(r.diverged);
  EXPECT_FALSE(r.incomplete);
  EXPECT_DOUBLE_EQ(r.final_val_loss, 2.1);
  EXPECT_NEAR(r.final_val_ppl, std::exp(2.1), 1e-9);
}

TEST(StabilitySummary, PlantedSpikesMergeIntoEvents) {
  ScratchDir dir;
  RunWriter w;
  for (long s = 1; s <= 300; ++s) {
    double loss = flat(s);
    if (s == 5) loss += 10;  // too early: fewer than 20 earlier steps
    if (s == 100) loss += 2;   // one-step event
    if (s == 150 || s == 152 || s == 155) loss += 1;  // one event of three steps
    if (s == 200) loss += 0.25;  // below the 0.3-nat floor
    if (s == 250) loss = NAN;    // skipped: an event of its own
    w.train(s, loss);
  }
  w.eval(300, 3.0, true);
  const RunStability r = summarise(write_run(dir, "spiky", w));
  ASSERT_EQ(r.spikes.size(), 3u);
  EXPECT_EQ(r.spikes[0].step, 100);
  EXPECT_EQ(r.spikes[0].spike_steps, 1);
  EXPECT_NEAR(r.spikes[0].max_excess, 4.99 - 3.0, 1e-9);  // median of 25 x 2.99, 25 x 3.01
  EXPECT_EQ(r.spikes[1].step, 150);
  EXPECT_EQ(r.spikes[1].spike_steps, 3);
  // Step 155: 4.01 against a median of 3.01 (the window holds 2 spikes, 23 x 2.99, 25 x 3.01).
  EXPECT_NEAR(r.spikes[1].max_excess, 1.0, 1e-9);
  EXPECT_EQ(r.spikes[2].step, 250);
  EXPECT_EQ(r.spikes[2].nonfinite_steps, 1);
  EXPECT_TRUE(std::isnan(r.spikes[2].max_excess));
  EXPECT_NEAR(r.max_spike_excess, 1.99, 1e-9);
  EXPECT_FALSE(r.diverged);  // a skipped step mid-run, then a final evaluation
}

TEST(StabilitySummary, NoisyLossNeedsSixScaledMads) {
  // 3 +- 0.2: MAD 0.2, threshold 6 * 1.4826 * 0.2 = 1.779 nats over the median 3.0.
  std::vector<TrainRecord> train;
  for (long s = 1; s <= 200; ++s) {
    TrainRecord t;
    t.step = s;
    t.loss = (s % 2 ? 3.2 : 2.8) + (s == 61 ? 1.5 : 0) + (s == 120 ? 2.5 : 0);
    train.push_back(t);
  }
  const auto events = find_spikes(train, SpikeOptions{});
  ASSERT_EQ(events.size(), 1u);  // step 61: 4.7 - 3.0 = 1.7 < 1.779
  EXPECT_EQ(events[0].step, 120);
  EXPECT_NEAR(events[0].max_excess, 2.3, 1e-9);
  SpikeOptions loose;
  loose.mad_factor = 5;  // 1.483: now step 61 counts
  EXPECT_EQ(find_spikes(train, loose).size(), 2u);
}

TEST(StabilitySummary, DivergedBlownUpAndIncompleteRuns) {
  ScratchDir dir;
  RunWriter ended_bad, blown, fine, incomplete, nan_final;
  for (long s = 1; s <= 60; ++s) {
    const double loss = 4.0 - s * 0.01;
    ended_bad.train(s, s > 57 ? NAN : loss);
    blown.train(s, loss), fine.train(s, loss), incomplete.train(s, loss), nan_final.train(s, loss);
    if (s == 20 || s == 40)
      for (RunWriter* w : {&ended_bad, &blown, &fine, &incomplete, &nan_final})
        w->eval(s, s == 20 ? 2.0 : 1.5);
  }
  blown.eval(60, 2.6, true);  // 1.1 nats over the best earlier (1.5)
  fine.eval(60, 2.4, true);   // 0.9 over: not diverged
  nan_final.eval(60, NAN, true);
  const RunStability a = summarise(write_run(dir, "ended_bad", ended_bad));
  EXPECT_TRUE(a.diverged);
  EXPECT_FALSE(a.incomplete);
  EXPECT_EQ(a.diverged_reason, "ended on non-finite values");
  EXPECT_TRUE(std::isnan(a.final_val_loss));
  ASSERT_EQ(a.spikes.size(), 1u);  // steps 58-60, one event
  EXPECT_EQ(a.spikes[0].spike_steps, 3);
  const RunStability b = summarise(write_run(dir, "blown", blown));
  EXPECT_TRUE(b.diverged);
  EXPECT_NE(b.diverged_reason.find("best earlier 1.5"), std::string::npos) << b.diverged_reason;
  const RunStability c = summarise(write_run(dir, "fine", fine));
  EXPECT_FALSE(c.diverged);
  EXPECT_FALSE(c.incomplete);
  const RunStability d = summarise(write_run(dir, "incomplete", incomplete));
  EXPECT_FALSE(d.diverged);
  EXPECT_TRUE(d.incomplete);
  const RunStability e = summarise(write_run(dir, "nan_final", nan_final));
  EXPECT_TRUE(e.diverged);
  EXPECT_EQ(e.diverged_reason, "final validation loss is non-finite");
}

TEST(StabilitySummary, TimeToTargetThroughputAndMaxLogits) {
  ScratchDir dir;
  RunWriter w, old;
  for (long s = 1; s <= 30; ++s) {
    // layer 0 peaks at 7.5 (step 12, head 1); layer 1 at 9.25 (step 25, head 0); one null.
    json ml = {{1.0 + s * 0.01, s == 12 ? 7.5 : 1.5}, {s == 25 ? 9.25 : 2.0, 2.5}};
    if (s == 3) ml[1][1] = nullptr;
    w.train(s, 3.0, s <= 10 ? 50 : 1000 + (s - 11) * 10, ml, s * 1.05);
    if (s % 10 == 0) w.eval(s, 3.5 - s / 20.0, s == 30, s * 1.05);  // 3.0, 2.5, 2.0
    old.train(s, 3.0, 100 + s);
    if (s % 10 == 0) old.eval(s, 3.5 - s / 20.0, s == 30);
  }
  const std::string wd = write_run(dir, "w", w), od = write_run(dir, "old", old);
  const RunStability r = summarise(wd, 2.5);
  EXPECT_TRUE(r.target_reached);
  EXPECT_EQ(r.target_step, 20);
  EXPECT_DOUBLE_EQ(r.target_seconds, 21.0);
  // The final evaluation (2.0 at step 30) reads other batches: it does not count
  // while intermediate evaluations exist, but does in a run with only a final one.
  EXPECT_FALSE(summarise(wd, 2.2).target_reached);
  EXPECT_FALSE(summarise(wd).target_reached);  // no target given
  RunWriter final_only;
  for (long s = 1; s <= 30; ++s) final_only.train(s, 3.0, 1000, json::array(), s * 1.0);
  final_only.eval(30, 2.0, true, 30.0);
  const RunStability f = summarise(write_run(dir, "final_only", final_only), 2.2);
  EXPECT_TRUE(f.target_reached);
  EXPECT_EQ(f.target_step, 30);
  EXPECT_DOUBLE_EQ(r.median_tokens_per_s, 1095.0);  // 1000..1190 after the first 10
  ASSERT_EQ(r.max_logit_per_layer.size(), 2u);
  EXPECT_DOUBLE_EQ(r.max_logit_per_layer[0], 7.5);
  EXPECT_DOUBLE_EQ(r.max_logit_per_layer[1], 9.25);
  EXPECT_DOUBLE_EQ(r.peak_max_logit, 9.25);
  EXPECT_EQ(r.peak_max_logit_step, 25);
  const RunStability o = summarise(od, 2.5);  // no train_seconds recorded
  EXPECT_TRUE(o.target_reached);
  EXPECT_TRUE(std::isnan(o.target_seconds));
  EXPECT_TRUE(o.max_logit_per_layer.empty());
  EXPECT_TRUE(std::isnan(o.peak_max_logit));
  RunWriter few;
  for (long s = 1; s <= 5; ++s) few.train(s, 3.0, s * 100);
  EXPECT_DOUBLE_EQ(summarise(write_run(dir, "few", few)).median_tokens_per_s, 300.0);
}

// Three runs of one LS setting, two seeds of it, and one MHSA run.
std::vector<std::string> study(const ScratchDir& dir) {
  std::vector<std::string> dirs;
  const double finals[] = {2.4, 2.6, 2.9};
  for (int i = 0; i < 3; ++i) {
    RunWriter w;
    for (long s = 1; s <= 40; ++s)
      w.train(s, 4.0 - s * 0.02, 1000, {{2.0 + i, 3.0}, {4.0, 5.0 + s * 0.1}});
    w.eval(20, 3.2);
    w.eval(40, finals[i], true, 12.5 + i);
    const std::string name = i < 2 ? "ls_seed" + std::to_string(i + 1) : "mhsa_seed1";
    const json cfg = i < 2 ? config({3, 3}, 1e-3, i + 1, dir.file(name), true, 1e-4)
                           : config({0, 0}, 1e-3, 1, dir.file(name), false, 0, true);
    dirs.push_back(write_run(dir, name, w, cfg));
  }
  return dirs;
}

TEST(StabilitySummary, SettingsGroupsAndMarkdown) {
  ScratchDir dir;
  StabilityOptions o;
  o.target_loss = 3.2;
  std::vector<RunStability> runs;
  for (const std::string& d : study(dir)) runs.push_back(summarise_run(read_run_metrics(d), o));
  EXPECT_EQ(runs[0].attention, "LS 3/4 w=64");
  EXPECT_EQ(runs[0].stabilisers, "z-loss 1e-4, AdaGC");
  EXPECT_EQ(runs[2].attention, "MHSA");
  EXPECT_EQ(runs[2].stabilisers, "qk-norm");
  EXPECT_EQ(runs[0].steps, 300);
  const auto groups = group_runs(runs);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].runs, (std::vector<size_t>{0, 1}));
  EXPECT_NEAR(groups[0].mean_final_val_loss, 2.5, 1e-12);
  EXPECT_DOUBLE_EQ(groups[0].min_final_val_loss, 2.4);
  EXPECT_DOUBLE_EQ(groups[0].max_final_val_loss, 2.6);
  EXPECT_EQ(groups[1].runs, (std::vector<size_t>{2}));
  const std::string md = summary_markdown(runs, groups, o);
  EXPECT_NE(md.find("| ls_seed1 | LS 3/4 w=64 | z-loss 1e-4, AdaGC | 0.001 | 1 | 2.4000 | 11.02 | "
                    "0 | no | 9.00 (40) | 1000 | 20 | n/a |"), std::string::npos) << md;
  EXPECT_NE(md.find("| mhsa_seed1 | 4.00 | 9.00 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| LS 3/4 w=64 | z-loss 1e-4, AdaGC | 0.001 | 2 (ls_seed1, ls_seed2) | "
                    "2.5000 | 2.4000 | 2.6000 | 0 | 0/2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("Target validation loss: 3.2"), std::string::npos);
  EXPECT_NE(md.find("max(0.3 nats, 6 * 1.4826 * MAD)"), std::string::npos);
  const json j = summary_json(runs, groups, o);
  EXPECT_EQ(j["runs"][1]["target"]["step"], 20);
  EXPECT_TRUE(j["runs"][1]["target"]["train_seconds"].is_null());  // the eval at 20 has none
  EXPECT_EQ(j["groups"][0]["runs"].size(), 2u);
}

TEST(StabilitySummary, LearningRateTableHasOneRowPerSettingAndOneColumnPerRate) {
  ScratchDir dir;
  StabilityOptions o;
  std::vector<RunStability> runs;
  // MHSA at 1e-3 (two seeds, 2.4 and 2.6) and 3e-3 (diverged); LS at 3e-3 only.
  const struct { std::vector<int> n_local; double lr; int seed; double final_loss; } spec[] = {
      {{0, 0}, 3e-3, 1, NAN}, {{0, 0}, 1e-3, 1, 2.4}, {{0, 0}, 1e-3, 2, 2.6}, {{3, 3}, 3e-3, 1, 2.2}};
  for (int i = 0; i < 4; ++i) {
    RunWriter w;
    for (long s = 1; s <= 30; ++s) w.train(s, 4.0 - s * 0.02);
    w.eval(10, 3.5);
    if (std::isfinite(spec[i].final_loss)) w.eval(30, spec[i].final_loss, true);
    else w.train(31, NAN);
    std::string name = "r";
    name += std::to_string(i);  // not "r" + ...: GCC 12 warns falsely (-Wrestrict)
    runs.push_back(summarise_run(
        read_run_metrics(write_run(
            dir, name, w, config(spec[i].n_local, spec[i].lr, spec[i].seed, dir.file(name)))),
        o));
  }
  const std::string md = summary_markdown(runs, group_runs(runs), o);
  EXPECT_NE(md.find("| attention | stabilisers | lr 0.001 | lr 0.003 |\n|---|---|---|---|\n"
                    "| MHSA | - | 2.5000 | n/a div |\n| LS 3/4 w=64 | - | - | 2.2000 |\n"),
            std::string::npos)
      << md;
  // One learning rate: no table.
  runs.resize(1);
  EXPECT_EQ(summary_markdown(runs, group_runs(runs), o).find("by learning rate"),
            std::string::npos);
}

TEST(StabilitySummary, ReportWritesSummaryAndSvgFiles) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "gnuplot not installed: lsgpt report cannot draw";
  ScratchDir dir;
  const auto runs = study(dir);
  const std::string args = "report '" + runs[0] + "' '" + runs[1] + "' '" + runs[2] +
                           "' --layer 1 -o '" + dir.file("r.html") + "' --summary '" +
                           dir.file("s.md") + "' --summary-json '" + dir.file("s.json") +
                           "' --target-loss 3.2 --svg-dir '" + dir.file("svg") + "'";
  const auto r = run_lsgpt(dir, args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(read_file(dir.file("s.md")).find("| ls_seed2 |"), std::string::npos);
  const json j = json::parse(read_file(dir.file("s.json")));
  EXPECT_EQ(j["target_loss"], 3.2);
  // 3.2 at the intermediate step 20; the final 2.4 reads other batches.
  EXPECT_EQ(j["runs"][0]["target"]["reached"], true);
  EXPECT_EQ(j["runs"][0]["target"]["step"], 20);
  EXPECT_TRUE(j["runs"][0]["target"]["train_seconds"].is_null());
  const std::vector<std::string> svgs{
      "grad_norm.svg", "heads_layer1_run1.svg", "heads_layer1_run2.svg", "heads_layer1_run3.svg",
      "loss.svg", "lr.svg", "max_logit.svg", "max_logit_layer0.svg", "max_logit_layer1.svg",
      "val_loss.svg"};
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir.file("svg")))
    found.push_back(e.path().filename().string());
  std::sort(found.begin(), found.end());
  EXPECT_EQ(found, svgs);
  for (const std::string& f : svgs) {
    EXPECT_NE(r.err.find("report: wrote " + dir.file("svg/" + f)), std::string::npos) << r.err;
    const std::string svg = read_file(dir.file("svg/" + f));
    EXPECT_EQ(svg.rfind("<?xml", 0), 0u) << f;
    EXPECT_NE(svg.find("</svg>"), std::string::npos) << f;
  }
}

TEST(StabilitySummary, BadSummaryOptionsAreOneError) {
  ScratchDir dir;
  const auto runs = study(dir);
  const std::string base = "report '" + runs[0] + "' -o '" + dir.file("r.html") + "' ";
  auto r = run_lsgpt(dir, base + "--summary '" + dir.file("no/such/dir/s.md") + "'");
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("lsgpt: error:"), std::string::npos) << r.err;
  }
  r = run_lsgpt(dir, base + "--summary x.md --target-loss inf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lsgpt: error: report: --target-loss must be a finite number"),
            std::string::npos) << r.err;
  r = run_lsgpt(dir, base + "--target-loss 3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--target-loss is for the summary"), std::string::npos) << r.err;
  r = run_lsgpt(dir, base + "--summary '" + dir.file("r.html") + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("must name different files"), std::string::npos) << r.err;
  // The same run twice, under two spellings, would count twice in the groups.
  r = run_lsgpt(dir, base + "'" + runs[0] + "/../" + fs::path(runs[0]).filename().string() +
                         "/' --summary x.md");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is given twice"), std::string::npos) << r.err;
  write_file(dir.file("plain"), "x");
  r = run_lsgpt(dir, base + "--svg-dir '" + dir.file("plain") + "/svg'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lsgpt: error: report: cannot create the SVG directory"), std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(dir.file("r.html")));
}

// Two seeds of one tiny LS setting trained by `lsgpt train`: the summary reads
// what the trainer really writes (final evaluation, train_seconds, tokens/s,
// max logits, config.json with absolute data paths and out_dir).
TEST(StabilitySummary, ReadsRealTrainingRuns) {
  testing::ScratchDir dir;
  std::mt19937 rng(7);
  std::vector<int32_t> tokens(3000);
  for (auto& t : tokens) t = int32_t(rng() % 50257);
  write_token_file((dir.path() / "tr.bin").string(), 50257, tokens);
  std::vector<RunStability> runs;
  StabilityOptions o;
  o.target_loss = 100.0;  // reached at the first evaluation
  for (const int seed : {1, 2}) {
    const std::string out = "run" + std::to_string(seed);
    const auto r = testing::run_command(
        "cd " + testing::quoted(dir.path().string()) + " && " + testing::quoted(LSGPT_BINARY) +
        " train --train tr.bin --valid tr.bin --steps 4 --seed " + std::to_string(seed) +
        " --out-dir " + out + " --n-layer 1 --d-model 32 --n-head 2 --seq-len 16 --n-local 1 "
        "--window 4 --quiet --batch-size 2 --eval-every 2 --eval-batches 1 "
        "--final-eval-batches 2 --warmup 1 < /dev/null");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    runs.push_back(summarise_run(read_run_metrics((dir.path() / out).string()), o));
  }
  // The final evaluation record, as written.
  json fin, first_eval;
  std::ifstream in(dir.path() / "run1" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j["type"] == "eval" && first_eval.is_null()) first_eval = j;
    if (j.value("final", false)) fin = j;
  }
  ASSERT_TRUE(fin.is_object());
  const RunStability& r = runs[0];
  EXPECT_EQ(r.name, "run1");
  EXPECT_EQ(r.attention, "LS 1/2 w=4");
  EXPECT_EQ(r.stabilisers, "-");
  EXPECT_DOUBLE_EQ(r.seed, 1);
  EXPECT_EQ(r.steps, 4);
  EXPECT_DOUBLE_EQ(r.final_val_loss, fin["val_loss"].get<double>());
  EXPECT_DOUBLE_EQ(r.final_val_ppl, fin["val_ppl"].get<double>());
  EXPECT_FALSE(r.diverged);
  EXPECT_FALSE(r.incomplete);
  EXPECT_TRUE(r.target_reached);
  EXPECT_EQ(r.target_step, first_eval["step"].get<long>());
  EXPECT_DOUBLE_EQ(r.target_seconds, first_eval["train_seconds"].get<double>());
  EXPECT_GT(r.median_tokens_per_s, 0);
  ASSERT_EQ(r.max_logit_per_layer.size(), 1u);
  EXPECT_TRUE(std::isfinite(r.max_logit_per_layer[0]));
  const auto groups = group_runs(runs);
  ASSERT_EQ(groups.size(), 1u);  // seeds and out_dir differ, nothing else
  EXPECT_EQ(groups[0].runs.size(), 2u);
}

}  // namespace test_stability_summary
}  // namespace
}  // namespace lsgpt
