#include "cli/model_options.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace lsgpt::cli {

std::string bundled_path(const std::string& relative) {
  if (std::filesystem::exists(relative)) return relative;
  return std::string(LSGPT_SOURCE_DIR) + "/" + relative;
}

void ModelOptions::add_to(CLI::App* cmd) {
  auto group = "Model (override the config file)";
  options.push_back(cmd->add_option("--config", config_path,
                                    "model config JSON (default: configs/default.json)")
                        ->group(group));
  options.push_back(cmd->add_option("--n-layer", n_layer, "transformer blocks")->group(group));
  options.push_back(cmd->add_option("--n-head", n_head, "attention heads per layer")->group(group));
  options.push_back(cmd->add_option("--d-model", d_model, "width")->group(group));
  options.push_back(cmd->add_option("--seq-len", seq_len, "context length (positions)")->group(group));
  options.push_back(cmd->add_option("--vocab-size", vocab_size,
                                    "vocabulary size (default 50257, GPT-2's BPE); token files "
                                    "must have been made with the same vocabulary")
                        ->group(group));
  options.push_back(cmd->add_option("--eot-token", eot_token,
                                    "end-of-text token id, which also starts an empty prompt "
                                    "(default: 50256 if the vocabulary has it, else "
                                    "vocab-size - 1)")
                        ->group(group));
  options.push_back(cmd->add_option("--n-local", n_local,
                                    "local heads per layer: one number or a comma list "
                                    "(0 = plain MHSA)")
                        ->group(group));
  options.push_back(cmd->add_option("--window", window, "local attention window w")->group(group));
  options.push_back(cmd->add_option("--span", span,
                                    "span/violation gradient scaling, e.g. "
                                    "q:cross:1.5:1,k:cross:1.5:1, or off")
                        ->group(group));
  options.push_back(cmd->add_option("--span-preset", span_preset,
                                    "named span setting (see docs/SPAN.md)")
                        ->group(group));
  options.push_back(cmd->add_flag("--qk-norm", qk_norm,
                                  "QK-norm: RMS-normalise each head's queries and keys, with "
                                  "learnable gains (docs/STABILISERS.md); --qk-norm=false: off")
                        ->group(group));
  options.push_back(cmd->add_option("--z-loss", z_loss,
                                    "z-loss coefficient on the output softmax's log-partition "
                                    "function, e.g. 1e-4 as PaLM (0: off)")
                        ->group(group));
}

bool ModelOptions::any_given() const {
  for (CLI::Option* o : options)
    if (o->count() > 0) return true;
  return false;
}

namespace {

bool given_flag(const std::vector<CLI::Option*>& options, const char* name) {
  for (CLI::Option* o : options)
    if (o->get_name() == name) return o->count() > 0;
  return false;
}

std::vector<int> parse_n_local(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      fail("--n-local: '", item, "' is not an integer");
    }
  }
  if (out.empty()) fail("--n-local needs a number or a comma-separated list");
  return out;
}

}  // namespace

nlohmann::json ModelOptions::given_json() const {
  auto given = [&](const char* name) { return given_flag(options, name); };
  nlohmann::json j = nlohmann::json::object();
  if (given("--config")) {
    const ModelConfig file = ModelConfig::load(config_path);  // validates the file
    std::ifstream in(config_path);
    const nlohmann::json raw = nlohmann::json::parse(in);
    const nlohmann::json full = file.to_json();
    for (auto& [key, _] : raw.items())
      if (key != "comment") j[key] = full.contains(key) ? full[key] : nlohmann::json();
  }
  if (given("--n-layer")) j["n_layer"] = n_layer;
  if (given("--n-head")) j["n_head"] = n_head;
  if (given("--d-model")) j["d_model"] = d_model;
  if (given("--seq-len")) j["seq_len"] = seq_len;
  if (given("--window")) j["window"] = window;
  if (given("--vocab-size")) j["vocab_size"] = vocab_size;
  if (given("--eot-token")) j["eot_token"] = eot_token;
  if (given("--n-local")) j["n_local"] = parse_n_local(n_local);
  // null: off, as the config JSON leaves the key out then.
  if (given("--qk-norm")) j["qk_norm"] = qk_norm ? nlohmann::json(true) : nlohmann::json();
  if (given("--z-loss")) {
    if (!(z_loss >= 0)) fail("--z-loss must be >= 0 (0: off), got ", z_loss);
    j["z_loss"] = z_loss != 0 ? nlohmann::json(z_loss) : nlohmann::json();
  }
  if (given("--span") && given("--span-preset"))
    fail("give either --span or --span-preset, not both");
  if (given("--span") || given("--span-preset")) {
    ModelConfig c;
    c.span = given("--span") ? SpanConfig::parse(span) : SpanConfig::preset(span_preset);
    const nlohmann::json cj = c.to_json();
    j["span"] = cj.contains("span") ? cj["span"] : nlohmann::json();
  }
  return j;
}

std::string ModelOptions::given_flags() const {
  std::string out;
  for (CLI::Option* o : options)
    if (o->count() > 0) out += (out.empty() ? "" : ", ") + o->get_name();
  return out;
}

ModelConfig ModelOptions::resolve() const {
  ModelConfig c = ModelConfig::load(config_path.empty() ? bundled_path("configs/default.json")
                                                        : config_path);
  auto given = [&](const char* name) { return given_flag(options, name); };
  if (given("--n-layer")) c.n_layer = n_layer;
  if (given("--n-head")) c.n_head = n_head;
  if (given("--d-model")) c.d_model = d_model;
  if (given("--seq-len")) c.seq_len = seq_len;
  if (given("--window")) c.window = window;
  if (given("--vocab-size")) {
    c.vocab_size = vocab_size;
    c.eot_token = -1;  // the default rule for the new vocabulary, unless --eot-token says
  }
  if (given("--eot-token")) {
    if (eot_token < 0) fail("--eot-token must be >= 0, got ", eot_token);
    c.eot_token = eot_token;
  }
  if (given("--n-local")) {
    c.n_local = parse_n_local(n_local);
  } else if (given("--n-head")) {
    c.n_local.clear();  // the file's split was for another head count: use the default
  } else if (given("--n-layer")) {
    bool uniform = true;
    for (int n : c.n_local) uniform &= n == c.n_local.front();
    if (uniform && !c.n_local.empty()) c.n_local = {c.n_local.front()};
    else c.n_local.clear();
  }
  if (given("--span") && given("--span-preset"))
    fail("give either --span or --span-preset, not both");
  if (given("--span")) c.span = SpanConfig::parse(span);
  if (given("--span-preset")) c.span = SpanConfig::preset(span_preset);
  if (given("--qk-norm")) c.qk_norm = qk_norm;
  if (given("--z-loss")) {
    if (!(z_loss >= 0)) fail("--z-loss must be >= 0 (0: off), got ", z_loss);
    c.z_loss = z_loss;
  }
  if (given("--n-layer") && !c.span.layers.empty() && int(c.span.layers.size()) != c.n_layer)
    c.span.layers.clear();
  c.normalize_and_validate();
  return c;
}

}  // namespace lsgpt::cli
