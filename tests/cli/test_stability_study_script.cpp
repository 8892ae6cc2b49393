// scripts/stability-study.sh, the documented command of the stability study
// (docs/results/stability-pg-books.md), run end to end on the CPU with its
// SMOKE shapes: every phase, the run naming the report reads, the skipping
// of finished runs that lets a study continue in a later call, and the
// generated Markdown.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "data/data_test_support.h"

namespace lsgpt {
namespace {
namespace test_stability_study_script {

using data_testing::read_file;
using data_testing::ScratchDir;
namespace fs = std::filesystem;

struct Shell {
  int exit_code;
  std::string out;
};

// Built by append: GCC 12 warns falsely (-Wrestrict) on literal + std::string.
std::string quoted(const std::string& path) { return std::string("'").append(path).append("'"); }
std::string plus(const std::string& env, const char* more) { return std::string(env).append(more); }

Shell run_script(const ScratchDir& dir, const std::string& env, const std::string& args) {
  const std::string log = dir.file("script.log");
  const std::string cmd = plus(env, " bash " LSGPT_SOURCE_DIR "/scripts/stability-study.sh ") + args +
                          " > '" + log + "' 2>&1";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(log)};
}

TEST(StabilityStudyScript, RunsEveryPhaseOnTheCpuAndResumes) {
  const bool gnuplot = std::system("command -v gnuplot >/dev/null 2>&1") == 0;
  ScratchDir dir;
  const std::string data = dir.file("data"), out = dir.file("out");
  ASSERT_EQ(std::system((std::string(LSGPT_BINARY) + " prepare --dataset wikitext2 --out-dir '" +
                         data + "' > /dev/null")
                            .c_str()),
            0);
  const std::string env =
      "SMOKE=1 SMOKE_STEPS=4 BATCH=2 LONG_BATCH=1 DEVICE=cpu LSGPT='" LSGPT_BINARY
      "' DATA_DIR='" + data +
      "' PROXY_SETTINGS='mhsa ls-qknorm' PROXY_LRS='1e-3 3e-3' DECISIVE_SETTINGS=ls-zloss"
      " DECISIVE_LRS=1e-3 SEEDS='1 2' LONG_SETTINGS=ls LONG_LRS=1e-3 NOCLIP_SETTINGS=mhsa"
      " NOCLIP_LRS=1e-3";
  const std::string phases = gnuplot ? "proxy decisive long noclip report" : "proxy decisive long noclip";
  Shell r = run_script(dir, env, "'" + out + "' " + phases);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const char* runs[] = {"proxy-mhsa-lr1e-3-s1",     "proxy-mhsa-lr3e-3-s1",
                        "proxy-ls-qknorm-lr1e-3-s1", "proxy-ls-qknorm-lr3e-3-s1",
                        "gpt2-ls-zloss-lr1e-3-s1",   "gpt2-ls-zloss-lr1e-3-s2",
                        "gpt2-ctx8192-ls-lr1e-3-s1", "gpt2-noclip-mhsa-lr1e-3-s1"};
  for (const char* name : runs) {
    const std::string run = out + "/runs/" + name;
    EXPECT_EQ(read_file(run + "/exit_code"), "0\n") << name << "\n" << r.out;
    EXPECT_TRUE(fs::exists(run + "/metrics.jsonl")) << name;
    EXPECT_FALSE(fs::exists(run + "/checkpoint.ckpt")) << name;  // removed: the metrics are the result
  }
  const std::string qk = read_file(out + "/runs/proxy-ls-qknorm-lr3e-3-s1/config.json");
  EXPECT_NE(qk.find("\"qk_norm\": true"), std::string::npos) << qk;
  const std::string zl = read_file(out + "/runs/gpt2-ls-zloss-lr1e-3-s2/config.json");
  EXPECT_NE(zl.find("\"z_loss\": 0.0001"), std::string::npos) << zl;
  EXPECT_NE(zl.find("\"seed\": 2"), std::string::npos) << zl;
  const std::string longer = read_file(out + "/runs/gpt2-ctx8192-ls-lr1e-3-s1/config.json");
  EXPECT_NE(longer.find("\"seq_len\": 256"), std::string::npos) << longer;  // 8192 / 32 in SMOKE
  const std::string noclip = read_file(out + "/runs/gpt2-noclip-mhsa-lr1e-3-s1/config.json");
  EXPECT_NE(noclip.find("\"clip\": 0.0"), std::string::npos) << noclip;

  if (gnuplot) {
    const std::string md = read_file(out + "/stability-pg-books.md");
    EXPECT_NE(md.find("## Runs: proxy"), std::string::npos) << md;
    EXPECT_NE(md.find("| gpt2-ls-zloss-lr1e-3-s2 | LS 3/4 w=16 | z-loss 1e-4 | 0.001 | 2 |"),
              std::string::npos) << md;
    EXPECT_NE(md.find("## Runs: gpt2-ctx8192"), std::string::npos) << md;
    EXPECT_NE(md.find("## Runs: gpt2-noclip"), std::string::npos) << md;
    // The unclipped runs have their own section, not rows among the clipped GPT-2 runs.
    const std::string gpt2_summary = read_file(out + "/summary-gpt2.json");
    EXPECT_EQ(gpt2_summary.find("noclip"), std::string::npos) << gpt2_summary;
    EXPECT_NE(md.find("| lr 0.001 | lr 0.003 |"), std::string::npos) << md;  // the proxy sweep
    EXPECT_NE(md.find("![gpt2-lr1e-3 loss](charts-gpt2-lr1e-3/loss.svg)"), std::string::npos)
        << md;
    EXPECT_NE(md.find("Legend: run 1 = gpt2-ls-zloss-lr1e-3-s1."), std::string::npos) << md;
    // The two seeds form one setting group.
    EXPECT_NE(md.find("| 2 (gpt2-ls-zloss-lr1e-3-s1, gpt2-ls-zloss-lr1e-3-s2) |"),
              std::string::npos) << md;
    EXPECT_TRUE(fs::exists(out + "/charts-gpt2-lr1e-3/loss.svg"));
    EXPECT_TRUE(fs::exists(out + "/summary-gpt2.json"));
  }

  // Again: every run is done, so nothing trains.
  r = run_script(dir, env, "'" + out + "' proxy decisive long");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out.find("[gpu "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decisive: 0 run(s) left"), std::string::npos) << r.out;

  // Other steps for finished runs: refused, not silently reused.
  r = run_script(dir, plus(env, " SMOKE_STEPS=5"), "'" + out + "' decisive");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("gpt2-ls-zloss-lr1e-3-s1: finished earlier with other flags"),
            std::string::npos) << r.out;

  // A failing lsgpt (here one that finds the disk full) is not a result: no
  // exit_code, the phase fails naming the run, and the report leaves it out.
  const std::string failing = dir.file("failing-lsgpt");
  std::ofstream(failing) << "#!/bin/sh\necho 'lsgpt: error: No space left on device' >&2\nexit 1\n";
  fs::permissions(failing, fs::perms::owner_exec, fs::perm_options::add);
  r = run_script(dir, plus(env, " PROXY_SETTINGS=mhsa PROXY_LRS=2e-3 LSGPT=") + quoted(failing),
                 "'" + out + "' proxy");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("stability-study: error: proxy: 1 run(s) not done: proxy-mhsa-lr2e-3-s1"),
            std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out + "/runs/proxy-mhsa-lr2e-3-s1/exit_code"));
  if (gnuplot) {
    r = run_script(dir, env, "'" + out + "' report");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_EQ(read_file(out + "/stability-pg-books.md").find("proxy-mhsa-lr2e-3-s1"),
              std::string::npos);
    // A report over unclipped runs alone (no proxy, decisive or long runs):
    // it once ended without a word, with exit status 1.
    const std::string only = dir.file("only");
    fs::create_directories(only + "/runs");
    fs::copy(out + "/runs/gpt2-noclip-mhsa-lr1e-3-s1", only + "/runs/gpt2-noclip-mhsa-lr1e-3-s1",
             fs::copy_options::recursive);
    r = run_script(dir, env, quoted(only) + " report");
    ASSERT_EQ(r.exit_code, 0) << r.out;
    EXPECT_NE(read_file(only + "/stability-pg-books.md").find("## Runs: gpt2-noclip"),
              std::string::npos) << r.out;
    EXPECT_TRUE(fs::exists(only + "/charts-gpt2-noclip-lr1e-3/loss.svg"));
  }

  // Settings lists are checked before anything trains, in every phase asked for.
  r = run_script(dir, plus(env, " LONG_SETTINGS=ls-qk-norm"), quoted(dir.file("fresh")) + " proxy long");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("unknown setting 'ls-qk-norm' in LONG_SETTINGS"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("[gpu "), std::string::npos) << r.out;
  // Every list and switch is checked before anything trains: a learning rate
  // or seed lsgpt would refuse, spaces alone, a word twice (two workers would
  // share one run directory), a SMOKE that is neither 0 nor 1 (SMOKE=yes once
  // failed as an unbound variable; SMOKE=2 would train as 1).
  const struct {
    const char* env;
    const char* message;
  } bad[] = {
      {" NOCLIP_LRS=abc", "NOCLIP_LRS: 'abc' is not a positive number"},
      {" NOCLIP_LRS=1e-3,3e-3", "NOCLIP_LRS: '1e-3,3e-3' is not a positive number"},
      {" NOCLIP_LRS=-1", "NOCLIP_LRS: '-1' is not a positive number"},
      {" NOCLIP_LRS=0", "NOCLIP_LRS: '0' is not a positive number"},
      {" NOCLIP_LRS=' '", "NOCLIP_LRS is empty"},
      {" NOCLIP_SETTINGS=' '", "NOCLIP_SETTINGS is empty"},
      {" NOCLIP_LRS='1e-3 1e-3'", "NOCLIP_LRS names '1e-3' twice"},
      {" DECISIVE_SETTINGS='mhsa mhsa'", "DECISIVE_SETTINGS names 'mhsa' twice"},
      {" SEEDS='1 x'", "SEEDS: 'x' is not a whole number"},
      {" SMOKE=yes", "SMOKE must be 0 or 1, not 'yes'"},
      {" DEVICE=gpu", "DEVICE must be cuda or cpu, not 'gpu'"},
  };
  for (const auto& c : bad) {
    r = run_script(dir, plus(env, c.env), quoted(dir.file("fresh")) + " noclip decisive");
    EXPECT_EQ(r.exit_code, 1) << c.env << "\n" << r.out;
    EXPECT_NE(r.out.find(std::string("stability-study: error: ") + c.message), std::string::npos)
        << c.env << "\n" << r.out;
    EXPECT_EQ(r.out.find("[gpu "), std::string::npos) << c.env << "\n" << r.out;
  }
  r = run_script(dir, plus(env, " STOP_AFTER=1h"), "'" + out + "' proxy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("STOP_AFTER must be a whole number of seconds, not '1h'"),
            std::string::npos) << r.out;
  r = run_script(dir, env, quoted(dir.file("empty")) + " report");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("no finished runs in"), std::string::npos) << r.out;

  r = run_script(dir, env, "'" + out + "' warmup");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("stability-study: error: unknown phase 'warmup'"), std::string::npos)
      << r.out;
  r = run_script(dir, "DEVICE=cpu LSGPT=/nonexistent/lsgpt", "'" + out + "' proxy");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("no lsgpt binary at '/nonexistent/lsgpt'"), std::string::npos) << r.out;
}

}  // namespace test_stability_study_script
}  // namespace
}  // namespace lsgpt
