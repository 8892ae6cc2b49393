// `lsgpt report`: a page made from damaged and mismatched runs still draws
// every run's curves (checked in headless Chromium, which parses the page as
// a browser does), escapes what comes from the runs, and refuses what it
// cannot read with one error and no page.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "data/data_test_support.h"
#include "io/checkpoint.h"
#include "io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_report {

using data_testing::read_file;
using data_testing::run_lsgpt;
using data_testing::ScratchDir;
using data_testing::write_file;
using nlohmann::json;
namespace fs = std::filesystem;

// metrics.jsonl as the trainer writes it: random losses, max logits per
// layer and head with a spike at `spike`, a skipped (non-finite) step, an
// evaluation every 20 steps.
std::string metrics(int steps, int layers, int heads, int spike, int skipped, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::string out;
  for (int s = 1; s <= steps; ++s) {
    json ml = json::array();
    for (int l = 0; l < layers; ++l) {
      json hs = json::array();
      for (int h = 0; h < heads; ++h) hs.push_back(2 + l + u(rng) + (s == spike ? 40.0 : 0.0));
      ml.push_back(hs);
    }
    json r{{"type", "train"}, {"step", s}, {"lr", 1e-3 * u(rng)}, {"tokens_per_s", 1000},
           {"max_logit", ml}};
    if (s == skipped) {
      r["loss"] = nullptr, r["grad_norm"] = nullptr, r["skipped"] = true;
      r["max_logit"][0][0] = nullptr;
    } else {
      r["loss"] = 10.0 / std::sqrt(s) + 0.1 * u(rng), r["grad_norm"] = 0.5 + u(rng);
    }
    out += r.dump() + "\n";
    if (s % 20 == 0)
      out += json{{"type", "eval"}, {"step", s}, {"val_loss", 9.0 / std::sqrt(s)}}.dump() + "\n";
  }
  return out;
}

bool have_chromium() { return std::system("command -v chromium >/dev/null 2>&1") == 0; }
// `lsgpt report` draws with gnuplot, which it requires (README command 2
// installs it; the GPU machine's image lacks it).
bool have_gnuplot_program() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }
#define REQUIRE_GNUPLOT() \
  if (!have_gnuplot_program()) GTEST_SKIP() << "gnuplot not installed: lsgpt report cannot draw"

// The page as Chromium's DOM after loading it, through --dump-dom.
std::string chromium_dom(const ScratchDir& dir, const std::string& html) {
  const std::string cmd =
      "timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
      "--disable-background-networking --disable-component-update --disable-sync "
      "--user-data-dir='" + dir.file("chromium-profile") + "' --dump-dom 'file://" + html +
      "' > '" + dir.file("dom.html") + "' 2> '" + dir.file("chromium.log") + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << read_file(dir.file("chromium.log"));
  return read_file(dir.file("dom.html"));
}

// Each line gnuplot drew, in page order: its key text ("run 1", "head 0",
// ...) and how many points it has (path vertices, or point marks), counting
// the sample in the key.
std::vector<std::pair<std::string, size_t>> plotted_lines(const std::string& dom) {
  std::vector<std::pair<std::string, size_t>> lines;
  const std::string open = "<g id=\"gnuplot_plot_";
  for (size_t at = dom.find(open); at != std::string::npos;) {
    const size_t next = dom.find(open, at + 1);
    const size_t end = std::min(next, dom.find("</svg>", at));
    const std::string body = dom.substr(at, end - at);
    std::string title;
    const size_t t = body.find("<text>");
    if (t != std::string::npos) title = body.substr(t + 6, body.find("</text>", t) - t - 6);
    size_t points = 0;
    for (size_t d = body.find(" d=\""); d != std::string::npos; d = body.find(" d=\"", d + 1))
      for (size_t i = d + 4; i < body.size() && body[i] != '"'; ++i)
        points += body[i] == 'M' || body[i] == 'L';
    for (size_t u = body.find("<use"); u != std::string::npos; u = body.find("<use", u + 1)) ++points;
    lines.push_back({title, points});
    at = next;
  }
  return lines;
}

TEST(Report, ComparesDamagedAndMismatchedRunsAndChromiumDrawsEveryCurve) {
  REQUIRE_GNUPLOT();
  ScratchDir dir;
  const std::string a = dir.file("run<b>&a"), b = dir.file("run_b");
  fs::create_directories(a);
  fs::create_directories(b);
  write_file(a + "/metrics.jsonl", metrics(120, 2, 3, 60, 70, 1));
  write_file(a + "/config.json",
             json{{"model", {{"n_layer", 2}, {"n_head", 3}}},
                  {"train", {{"lr", 0.001}, {"out_dir", "<script>alert('x')</script>"}}}}
                 .dump(2));
  // Run b: three layers, a line that is not JSON, and a last line cut mid-record.
  std::string mb = metrics(80, 3, 2, 30, -1, 2);
  mb.insert(mb.find('\n') + 1, "not json at all\n");
  mb += R"({"type":"train","step":81,"loss":1.)";
  write_file(b + "/metrics.jsonl", mb);
  const std::string html = dir.file("report.html");
  const auto r = run_lsgpt(dir, "report '" + a + "' '" + b + "' --layer 1 --log-y -o '" + html + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("cut off mid-line"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("no config.json"), std::string::npos) << r.err;
  const std::string page = read_file(html);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_NE(page.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(page.find("run&lt;b&gt;&amp;a"), std::string::npos);
  EXPECT_EQ(page.find("run<b>"), std::string::npos);
  EXPECT_EQ(page.find("http"), page.find("http://www.w3.org"));  // no network references but SVG's namespace

  if (!have_chromium()) GTEST_SKIP() << "chromium not installed: the page was not opened in a browser";
  const std::string dom = chromium_dom(dir, html);
  ASSERT_NE(dom.find("</html>"), std::string::npos) << dom.substr(0, 500);
  // Charts: training loss, validation, lr, grad norm, all layers, layers 0-2,
  // and layer 1 per head for each of the two runs.
  size_t svgs = 0;
  for (size_t p = 0; (p = dom.find("<svg", p)) != std::string::npos; ++p) ++svgs;
  EXPECT_EQ(svgs, 10u);
  const auto lines = plotted_lines(dom);
  std::map<std::string, std::vector<size_t>> by_title;
  for (const auto& [title, points] : lines) by_title[title].push_back(points);
  // run 1 draws 119 finite losses (one step skipped); run 2 draws 80 steps.
  ASSERT_GE(by_title["run 1"].size(), 6u);
  ASSERT_GE(by_title["run 2"].size(), 7u);
  EXPECT_GE(by_title["run 1"][0], 100u);  // training loss
  EXPECT_GE(by_title["run 2"][0], 70u);
  EXPECT_GE(by_title["run 1"][1], 6u);  // validation: 6 evaluations, drawn with marks
  EXPECT_LE(by_title["run 1"][1], 15u);
  for (const size_t points : by_title["run 2"]) EXPECT_GE(points, 4u);
  // Marks of run 1's skipped step: loss, lr, norm, all layers, layers 0-1
  // (run 1 has no layer 2).
  EXPECT_EQ(by_title["run 1 skipped step"].size(), 6u);
  EXPECT_EQ(by_title["run 2 skipped step"].size(), 0u);
  EXPECT_EQ(by_title["head 2"].size(), 1u);              // run 1 has 3 heads, run 2 has 2
  EXPECT_EQ(by_title["head 0"].size(), 2u);
}

TEST(Report, UnreadableRunsAreOneErrorAndNoPage) {
  ScratchDir dir;
  const std::string html = dir.file("r.html");
  auto r = run_lsgpt(dir, "report '" + dir.file("missing") + "' -o '" + html + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lsgpt: error: report: no run directory"), std::string::npos) << r.err;
  fs::create_directories(dir.file("norun"));
  r = run_lsgpt(dir, "report '" + dir.file("norun") + "' -o '" + html + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("has no metrics.jsonl"), std::string::npos) << r.err;
  r = run_lsgpt(dir, "report '" + dir.file("norun") + "' --layer -1 -o '" + html + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--layer: must be a layer index (0, 1, ...), got -1"), std::string::npos)
      << r.err;
  // The page over a run's own metrics used to replace them.
  write_file(dir.file("norun/metrics.jsonl"), "");
  r = run_lsgpt(dir, "report '" + dir.file("norun") + "' -o '" + dir.file("norun/metrics.jsonl") +
                         "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is the metrics.jsonl of run"), std::string::npos) << r.err;
  r = run_lsgpt(dir, "report '" + dir.file("norun") + "' -o '" + html + "' --summary '" +
                         dir.file("norun/../norun/config.json") + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("is the config.json of run"), std::string::npos) << r.err;
  EXPECT_EQ(fs::file_size(dir.file("norun/metrics.jsonl")), 0u);
  EXPECT_FALSE(fs::exists(dir.file("norun/config.json")));
  fs::remove(dir.file("norun/metrics.jsonl"));
  fs::create_directories(dir.file("dirrun/metrics.jsonl"));
  r = run_lsgpt(dir, "report '" + dir.file("dirrun") + "' -o '" + html + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("dirrun/metrics.jsonl is not a regular file"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(html));
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"dirrun", "norun"}));
}

TEST(Report, EmptyMetricsBecomeANoteOnThePage) {
  REQUIRE_GNUPLOT();
  ScratchDir dir;
  fs::create_directories(dir.file("empty"));
  write_file(dir.file("empty/metrics.jsonl"), "");
  const std::string html = dir.file("r.html");
  const auto r = run_lsgpt(dir, "report '" + dir.file("empty") + "' --layer 3 -o '" + html + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string page = read_file(html);
  EXPECT_NE(page.find("metrics.jsonl is empty"), std::string::npos);
  EXPECT_NE(page.find("--layer 3 is not one of them"), std::string::npos);
}

TEST(Report, SettingsComeFromTheCheckpointWhenConfigJsonIsMissing) {
  REQUIRE_GNUPLOT();
  ScratchDir dir;
  fs::create_directories(dir.file("run"));
  write_file(dir.file("run/metrics.jsonl"), metrics(30, 2, 2, 10, -1, 5));
  save_checkpoint(dir.file("run/checkpoint.ckpt"),
                  testing::random_checkpoint(testing::tiny_config(), 3, false));
  const std::string html = dir.file("r.html");
  const auto r = run_lsgpt(dir, "report '" + dir.file("run") + "' -o '" + html + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string page = read_file(html);
  EXPECT_NE(page.find("settings taken from checkpoint.ckpt"), std::string::npos);
  EXPECT_NE(page.find("<code>model.window</code></td><td>3</td>"), std::string::npos);
  EXPECT_NE(page.find("<code>train.schedule</code></td><td>cosine</td>"), std::string::npos);
}

}  // namespace test_report
}  // namespace
}  // namespace lsgpt
