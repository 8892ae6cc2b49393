// The multi-GPU benchmark scripts on the CPU: bench/multi_gpu.sh's refusal of
// bad settings (one error line, non-zero exit), its whole path with CPU ranks
// under mpirun (DEVICE=cpu: runs, metrics, the JSON rows, the table of
// bench/multi_gpu_table.py), and bench/scaling_model.py's arithmetic against
// the equations of docs/DISTRIBUTED.md ("Past two GPUs"), recomputed here.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../io/io_test_support.h"

namespace lsgpt {
namespace {
namespace test_multi_gpu_scripts {

using json = nlohmann::json;
using testing::quoted;
using testing::run_command;
using testing::ScratchDir;
namespace fs = std::filesystem;

const std::string kSource = LSGPT_SOURCE_DIR;

bool have(const char* program) {
  return run_command(std::string("command -v ") + program).exit_code == 0;
}

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> rows;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '{') rows.push_back(json::parse(line));
  return rows;
}

int error_lines(const std::string& output) {
  int n = 0;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) n += line.rfind("error: ", 0) == 0;
  return n;
}

// bench/multi_gpu.sh with environment `env` and arguments `args`, bounded.
testing::CommandResult multi_gpu(const std::string& env, const std::string& args) {
  return run_command("env " + env + " timeout 300 bash " + quoted(kSource + "/bench/multi_gpu.sh") +
                     " " + args + " < /dev/null");
}

TEST(MultiGpuScript, RefusesBadSettingsWithOneMessage) {
  ScratchDir dir;
  const std::string build = quoted(fs::path(LSGPT_BINARY).parent_path().string());
  const std::string out = quoted(dir.file("out"));
  auto r = multi_gpu("", "");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("usage:"), std::string::npos) << r.output;
  const struct {
    std::string env, args, message;
  } cases[] = {
      {"GPUS='1 x'", build + " " + out, "GPUS: 'x' is not a positive integer"},
      {"GPUS=0", build + " " + out, "GPUS: '0' is not a positive integer"},
      {"GPUS='1 2 1'", build + " " + out, "GPUS: 1 given twice"},
      {"MODELS='gpt2-small gpt2-small'", build + " " + out, "MODELS: gpt2-small given twice"},
      {"DEVICE=tpu", build + " " + out, "DEVICE must be cuda or cpu, got 'tpu'"},
      {"MODELS=nosuch", build + " " + out, "nosuch.json not found"},
      {"MODELS=default", build + " " + out, "default-mhsa.json not found"},
      {"TORCH=2", build + " " + out, "TORCH must be 0 or 1, got '2'"},
      {"DEVICE=cpu TORCH=1", build + " " + out, "TORCH=1 needs DEVICE=cuda"},
      {"BATCH=-1", build + " " + out, "BATCH must be a positive integer, got '-1'"},
      {"", build + " " + out + " 5 5", "WARMUP (5) must be below STEPS (5)"},
      {"", build + " " + out + " ten", "STEPS must be a positive integer, got 'ten'"},
      {"", quoted(dir.path().string()) + " " + out, "lsgpt not found; build with -DLSGPT_CUDA=ON"},
      {"DEVICE=cpu", quoted(dir.path().string()) + " " + out, "lsgpt not found; build lsgpt first"},
      {"DEVICE=cpu", build + " " + out, "DEVICE=cpu needs MODELS"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.env + " " + c.args);
    r = multi_gpu(c.env, c.args);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << r.output;
    EXPECT_EQ(error_lines(r.output), 1) << r.output;
  }
  // Without NVIDIA GPUs, DEVICE=cuda (the default) says why it cannot run.
  if (!have("nvidia-smi")) {
    r = multi_gpu("", build + " " + out);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("nvidia-smi not found"), std::string::npos) << r.output;
  }
}

// The whole benchmark with two CPU "GPUs": a tiny LS/MHSA config pair, 1 and
// 2 ranks, 3 steps of which 2 are timed.
TEST(MultiGpuScript, RunsCpuRanksAndPrintsTheTable) {
  if (!have("python3") || !have("mpirun"))
    GTEST_SKIP() << "python3 and mpirun (OpenMPI) are needed";
  ScratchDir dir;
  fs::create_directories(dir.file("configs"));
  const json tiny{{"n_layer", 1}, {"n_head", 2}, {"d_model", 64}, {"seq_len", 32},
                  {"n_local", 1}, {"window", 8}};
  json mhsa = tiny;
  mhsa["n_local"] = 0;
  std::ofstream(dir.file("configs/tiny.json")) << tiny.dump();
  std::ofstream(dir.file("configs/tiny-mhsa.json")) << mhsa.dump();
  // Its own TMPDIR: OpenMPI's session directory, apart from parallel tests.
  const std::string env = "TMPDIR=" + quoted(dir.path().string()) +
                          " OMP_NUM_THREADS=1 DEVICE=cpu GPUS='1 2' MODELS=tiny CONFIG_DIR=" +
                          quoted(dir.file("configs")) + " BATCH=2 SEQ_LEN=32 TOKENS=20000";
  const std::string out = dir.file("out");
  const auto r = multi_gpu(env, quoted(fs::path(LSGPT_BINARY).parent_path().string()) + " " +
                                    quoted(out) + " 3 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(out + "/multi_gpu.jsonl");
  const std::vector<json> rows =
      json_lines(std::string(std::istreambuf_iterator<char>(in), {}));
  ASSERT_EQ(rows.size(), 4u) << r.output;
  int seen = 0;
  for (const json& row : rows) {
    SCOPED_TRACE(row.dump());
    EXPECT_EQ(row["impl"], "lsgpt");
    EXPECT_EQ(row["model"], "tiny");
    EXPECT_EQ(row["steps_timed"], 2);
    EXPECT_EQ(row["batch_per_gpu"], 2);
    EXPECT_GT(row["tokens_per_s"].get<double>(), 0);
    const int gpus = row["gpus"].get<int>();
    seen |= (row["attn"] == "ls" ? 1 : 4) << (gpus - 1);
  }
  EXPECT_EQ(seen, 15) << "want ls and mhsa on 1 and 2 ranks";
  std::ifstream log(out + "/run-tiny-ls-2.log");
  const std::string two(std::istreambuf_iterator<char>(log), {});
  EXPECT_NE(two.find("data parallel: 2 ranks (MPI)"), std::string::npos) << two;
  EXPECT_NE(r.output.find("### tiny"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| LS | 1 | "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| 1.000x (100.0%) |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| MHSA | 2 | "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("efficiency at 8 GPUs - (target >= 90%): not measured"),
            std::string::npos)
      << r.output;
}

// The model's equations, recomputed from GPT-2 small's layout.
struct Small {
  static constexpr double C = 768, Vp = 50304, T = 1024, L = 12;
  static constexpr double emb = Vp * C + T * C, layer = 12 * C * C + 13 * C;
  static constexpr double P = emb + L * layer + 2 * C;                 // 124,475,904
  static constexpr double opt = 1.82e-3 / 124475904.0 * 3.35 / 4.8 * P;  // s
  static double gather(int n) { return (n - 1.0) / n * 2 * P; }         // bytes
  static constexpr double tail = 2 * (emb + layer);                     // bytes
};

TEST(ScalingModel, CalibratesOnTwoGpusAndFollowsItsEquations) {
  if (!have("python3")) GTEST_SKIP() << "python3 is needed";
  ScratchDir dir;
  std::ofstream(dir.file("m.jsonl"))
      << R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 1, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 500000})"
      << "\n"
      << R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 960000})"
      << "\n"
      << R"({"model": "gpt2-small", "peer": "torch-ddp-compile", "attention": "ls", "gpus": 2, "tokens_per_s": 1})"
      << "\n";
  const std::string script = "python3 " + quoted(kSource + "/bench/scaling_model.py");
  const auto r = run_command(script + " --measured " + quoted(dir.file("m.jsonl")) +
                             " --models gpt2-small --gpus 1 2 8 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<json> rows = json_lines(r.output);
  ASSERT_EQ(rows.size(), 3u) << r.output;  // LS only: no MHSA rows were measured
  EXPECT_EQ(rows[0]["params"].get<double>(), Small::P);
  const double t1 = 16384 / 500000.0, t2 = 2 * 16384 / 960000.0;
  const double e2 = t2 - t1 + Small::opt / 2;
  const double beta = (Small::gather(2) + Small::tail) / e2;
  EXPECT_NEAR(rows[0]["beta_eff_gbs"].get<double>(), beta / 1e9, 0.05);
  EXPECT_NEAR(rows[1]["tokens_per_s"].get<double>(), 960000, 1);  // calibration point
  const double t8 = t1 - 7.0 / 8 * Small::opt + (Small::gather(8) + Small::tail) / beta;
  EXPECT_NEAR(rows[2]["step_ms"].get<double>(), t8 * 1e3, 1e-3);
  EXPECT_NEAR(rows[2]["tokens_per_s"].get<double>(), 8 * 16384 / t8, 1);
  EXPECT_NEAR(rows[2]["efficiency"].get<double>(), t1 / t8, 1e-4);
  EXPECT_LT(rows[2]["efficiency"].get<double>(), rows[1]["efficiency"].get<double>());
  EXPECT_GE(rows[2]["efficiency_optimistic"].get<double>(),
            rows[2]["efficiency"].get<double>());
  EXPECT_TRUE(rows[2]["measured_tokens_per_s"].is_null());
  // Bad input: one message, non-zero exit.
  auto bad = run_command(script + " --gpus 0");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("GPU counts must be >= 1"), std::string::npos) << bad.output;
  std::ofstream(dir.file("slow.jsonl"))
      << R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 1, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 500000})"
      << "\n"
      << R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 1100000})"
      << "\n";
  bad = run_command(script + " --models gpt2-small --measured " + quoted(dir.file("slow.jsonl")));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("nothing left to calibrate"), std::string::npos) << bad.output;

  // gpt2-medium alone, measured nowhere: calibrated on gpt2-small's rows
  // although --models does not list it (it once needed gpt2-small listed first).
  const auto medium = run_command(script + " --measured " + quoted(dir.file("m.jsonl")) +
                                  " --models gpt2-medium --gpus 1 8 --json");
  ASSERT_EQ(medium.exit_code, 0) << medium.output;
  const std::vector<json> mrows = json_lines(medium.output);
  ASSERT_EQ(mrows.size(), 2u) << medium.output;
  EXPECT_EQ(mrows[0]["model"], "gpt2-medium");
  EXPECT_NEAR(mrows[0]["beta_eff_gbs"].get<double>(), beta / 1e9, 0.05);
}

// Rows the two scripts refuse, each with one error line: what a damaged,
// hand-merged or foreign multi_gpu.jsonl holds.
TEST(MultiGpuTableAndScalingModel, RefuseDamagedRowsWithOneMessage) {
  if (!have("python3")) GTEST_SKIP() << "python3 is needed";
  ScratchDir dir;
  const std::string one =
      R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 1, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 500000})";
  const std::string two =
      R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 960000})";
  const struct {
    std::string name, second_line, table_message, model_message;
  } cases[] = {
      {"cut", R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "tok)",
       "cut.jsonl:2: not a benchmark row", "cut.jsonl:2: "},
      {"array", "[1, 2]", "not a JSON object", "not a JSON object"},
      {"zero", R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 0})",
       "tokens_per_s must be a number > 0, not 0", "tokens_per_s must be a number > 0, not 0"},
      {"nan", R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": NaN})",
       "tokens_per_s must be a number > 0, not nan", "tokens_per_s must be a number > 0, not nan"},
      {"nogpus", R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 0, "batch_per_gpu": 16, "seq_len": 1024, "tokens_per_s": 1})",
       "gpus must be a whole number >= 1, not 0", "gpus must be a whole number >= 1, not 0"},
      {"twice", one, "a second lsgpt row for gpt2-small ls on 1 GPU (the first is line 1)",
       "a second row for gpt2-small ls on 1 GPU(s) (the first is line 1)"},
  };
  const std::string table = "python3 " + quoted(kSource + "/bench/multi_gpu_table.py") + " ";
  const std::string model =
      "python3 " + quoted(kSource + "/bench/scaling_model.py") + " --models gpt2-small --measured ";
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.file(c.name + ".jsonl");
    std::ofstream(path) << one << "\n" << c.second_line << "\n" << two << "\n";
    for (const auto& [command, message] :
         {std::pair{table, c.table_message}, std::pair{model, c.model_message}}) {
      const auto r = run_command(command + quoted(path));
      EXPECT_NE(r.exit_code, 0) << r.output;
      EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
      EXPECT_EQ(error_lines(r.output), 1) << r.output;
      EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
    }
  }
  // Rows of two runs with other B or T: the model would use the last one's.
  const std::string mixed = dir.file("mixed.jsonl");
  std::ofstream(mixed)
      << one << "\n"
      << R"({"impl": "lsgpt", "model": "gpt2-small", "attn": "ls", "gpus": 2, "batch_per_gpu": 8, "seq_len": 1024, "tokens_per_s": 480000})"
      << "\n";
  auto r = run_command(model + quoted(mixed));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("B = 8, T = 1024, but the rows before it have B = 16"),
            std::string::npos) << r.output;
  for (const std::string& command : {table, model}) {
    r = run_command(command + quoted(dir.file("absent.jsonl")));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("error: cannot read"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
  }
}

// A reader that stops early (| head -1) while the script still writes (600
// GPU counts: more than a pipe buffer) ends it quietly, with no BrokenPipe
// traceback.
TEST(ScalingModel, QuietWhenTheReaderStopsEarly) {
  std::string counts;
  for (int n = 1; n <= 600; ++n) counts.append(" ").append(std::to_string(n));
  const auto r = run_command("(python3 " + quoted(kSource + "/bench/scaling_model.py") + " --gpus" +
                             counts + " | head -1) 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("B = 16, T = 1024 per GPU"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
}

}  // namespace test_multi_gpu_scripts
}  // namespace
}  // namespace lsgpt
