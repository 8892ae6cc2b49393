#include "model/config.h"

#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace lsgpt {
namespace {

using json = nlohmann::json;

double parse_alpha(const std::string& s, const std::string& what) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(s, &used);
  } catch (const std::exception&) {
    fail("span: ", what, " '", s, "' is not a number");
  }
  if (used != s.size()) fail("span: ", what, " '", s, "' is not a number");
  if (!std::isfinite(x)) fail("span: ", what, " must be finite, got '", s, "'");
  return x;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string cur;
  std::istringstream is(s);
  while (std::getline(is, cur, sep)) parts.push_back(cur);
  if (!s.empty() && s.back() == sep) parts.emplace_back();
  return parts;
}

std::string basis_name(SpanBasis b) { return b == SpanBasis::cross ? "cross" : "self"; }

SpanBasis parse_basis(const std::string& s, const std::string& target) {
  if (s == "cross") {
    if (target == "v") fail("span: v supports the self basis only (cross is defined for q and k)");
    return SpanBasis::cross;
  }
  if (s == "self") return SpanBasis::self;
  fail("span: unknown basis '", s, "' for ", target, " (expected cross or self)");
}

void check_target(const SpanTarget& t, const char* name) {
  if (!std::isfinite(t.alpha_par) || !std::isfinite(t.alpha_perp))
    fail("span: alphas of ", name, " must be finite");
  if (std::string(name) == "v" && t.enabled && t.basis == SpanBasis::cross)
    fail("span: v supports the self basis only (cross is defined for q and k)");
}

json target_json(const SpanTarget& t) {
  return json{{"enabled", t.enabled},
              {"basis", basis_name(t.basis)},
              {"alpha_par", t.alpha_par},
              {"alpha_perp", t.alpha_perp}};
}

SpanTarget target_from_json(const json& j, const std::string& name) {
  if (!j.is_object()) fail("config: span.", name, " must be an object");
  for (auto& [key, _] : j.items())
    if (key != "enabled" && key != "basis" && key != "alpha_par" && key != "alpha_perp")
      fail("config: unknown key span.", name, ".", key);
  SpanTarget t;
  t.enabled = j.value("enabled", true);
  t.basis = parse_basis(j.value("basis", std::string("cross")), name);
  auto num = [&](const char* key) {
    if (!j.contains(key)) return 1.0;
    if (!j[key].is_number()) fail("config: span.", name, ".", key, " must be a number");
    return j[key].get<double>();
  };
  t.alpha_par = num("alpha_par");
  t.alpha_perp = num("alpha_perp");
  check_target(t, name.c_str());
  return t;
}

// An integer that fits in int: get<int>() would wrap 4294967297 to 1 silently.
bool fits_int(const json& v) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= uint64_t(INT_MAX);
  const int64_t x = v.get<int64_t>();
  return x >= INT_MIN && x <= INT_MAX;
}

int get_int(const json& j, const char* key, int fallback) {
  if (!j.contains(key)) return fallback;
  if (!j[key].is_number_integer()) fail("config: '", key, "' must be an integer");
  if (!fits_int(j[key])) fail("config: '", key, "' is ", j[key].dump(), ", out of range");
  return j[key].get<int>();
}

int n_local_entry(const json& x) {
  if (!x.is_number_integer()) fail("config: n_local entries must be integers");
  if (!fits_int(x)) fail("config: n_local entry ", x.dump(), " is out of range");
  return x.get<int>();
}

}  // namespace

SpanConfig SpanConfig::parse(const std::string& text) {
  SpanConfig cfg;
  if (text.empty() || text == "off" || text == "none") return cfg;
  for (const std::string& item : split(text, ',')) {
    auto f = split(item, ':');
    if (f.size() != 4)
      fail("span: '", item, "' must be target:basis:alpha_par:alpha_perp, e.g. q:cross:1.5:1");
    SpanTarget* t = f[0] == "q" ? &cfg.q : f[0] == "k" ? &cfg.k : f[0] == "v" ? &cfg.v : nullptr;
    if (!t) fail("span: unknown target '", f[0], "' (expected q, k or v)");
    if (t->enabled) fail("span: target '", f[0], "' is given twice");
    t->enabled = true;
    t->basis = parse_basis(f[1], f[0]);
    t->alpha_par = parse_alpha(f[2], "alpha_par");
    t->alpha_perp = parse_alpha(f[3], "alpha_perp");
  }
  return cfg;
}

std::string SpanConfig::to_string() const {
  std::ostringstream os;
  bool first = true;
  auto put = [&](const char* name, const SpanTarget& t) {
    if (!t.enabled) return;
    os << (first ? "" : ",") << name << ':' << basis_name(t.basis) << ':' << t.alpha_par << ':'
       << t.alpha_perp;
    first = false;
  };
  put("q", q), put("k", k), put("v", v);
  std::string s = first ? "off" : os.str();
  if (!first && !layers.empty()) {
    s += " layers=";
    for (bool on : layers) s += on ? '1' : '0';
  }
  return s;
}

SpanLayer ModelConfig::span_layer(int layer) const {
  SpanLayer s;
  if (!span.any()) return s;
  if (!span.layers.empty() && !span.layers.at(layer)) return s;
  s.q = span.q, s.k = span.k, s.v = span.v;
  return s;
}

AttentionSpec ModelConfig::attention_spec(int layer, int B, int T) const {
  AttentionSpec a;
  a.B = B, a.T = T, a.n_head = n_head, a.head_dim = head_dim();
  a.n_local = n_local.at(layer);
  a.window = window;
  a.span = span_layer(layer);
  return a;
}

namespace {

// The count in `Number`: size_t for the real one, double to bound a config
// whose count would overflow it.
template <typename Number>
Number parameter_count(const ModelConfig& c) {
  const Number C = c.d_model;
  Number per_layer = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C +
                     4 * C * C + C;
  if (c.qk_norm) per_layer += 2 * Number(c.head_dim());
  return Number(c.padded_vocab()) * C + Number(c.seq_len) * C + Number(c.n_layer) * per_layer +
         2 * C;
}

// Beyond these no machine holds the model (1e12 parameters are 4 TB in
// fp32 before gradients and AdamW's moments); refused before anything is
// sized by them: n_local's per-layer list at n_layer 2e9 took minutes and
// gigabytes before any other error could show.
constexpr int kMaxLayers = 100000;
constexpr double kMaxParameters = 1e12;

}  // namespace

size_t ModelConfig::num_parameters() const { return parameter_count<size_t>(*this); }

void ModelConfig::normalize_and_validate() {
  if (n_layer < 1) fail("config: n_layer must be >= 1, got ", n_layer);
  if (n_head < 1) fail("config: n_head must be >= 1, got ", n_head);
  if (d_model < 1) fail("config: d_model must be >= 1, got ", d_model);
  if (d_model % n_head != 0)
    fail("config: d_model (", d_model, ") must be divisible by n_head (", n_head, ")");
  if (seq_len < 1) fail("config: seq_len must be >= 1, got ", seq_len);
  if (vocab_size < 1 || vocab_size > 65536)
    fail("config: vocab_size must be in 1..65536 (token ids are stored in 16 bits), got ",
         vocab_size);
  if (n_layer > kMaxLayers)
    fail("config: n_layer must be at most ", kMaxLayers, ", got ", n_layer);
  if (const double n = parameter_count<double>(*this); n > kMaxParameters)
    fail("config: the model would have ", n, " parameters; lsgpt refuses more than ",
         kMaxParameters, " (4 TB of fp32 weights)");
  if (eot_token < 0) eot_token = default_eot_token(vocab_size);
  if (eot_token >= vocab_size)
    fail("config: eot_token ", eot_token, " is outside the vocabulary of ", vocab_size,
         " tokens (it must be in 0..", vocab_size - 1, ")");
  if (window < 1) fail("config: window must be >= 1, got ", window);
  if (n_local.empty()) n_local.assign(n_layer, default_n_local(n_head));
  if (n_local.size() == 1) n_local.assign(n_layer, n_local[0]);
  if (int(n_local.size()) != n_layer)
    fail("config: n_local lists ", n_local.size(), " layers but n_layer is ", n_layer);
  for (int l = 0; l < n_layer; ++l)
    if (n_local[l] < 0 || n_local[l] > n_head)
      fail("config: n_local of layer ", l, " is ", n_local[l], "; it must be in 0..n_head (",
           n_head, ")");
  check_target(span.q, "q"), check_target(span.k, "k"), check_target(span.v, "v");
  if (!span.layers.empty() && int(span.layers.size()) != n_layer)
    fail("config: span.layers lists ", span.layers.size(), " layers but n_layer is ", n_layer);
  if (!(z_loss >= 0) || !std::isfinite(z_loss))
    fail("config: z_loss must be a finite number >= 0 (0: off), got ", z_loss);
}

json ModelConfig::to_json() const {
  json j{{"n_layer", n_layer},   {"n_head", n_head},        {"d_model", d_model},
         {"seq_len", seq_len},   {"vocab_size", vocab_size}, {"n_local", n_local},
         {"window", window}};
  // -1 (not yet normalized) is left out so from_json applies the default rule.
  if (eot_token >= 0) j["eot_token"] = eot_token;
  if (span.any()) {
    json s = json::object();
    if (span.q.enabled) s["q"] = target_json(span.q);
    if (span.k.enabled) s["k"] = target_json(span.k);
    if (span.v.enabled) s["v"] = target_json(span.v);
    if (!span.layers.empty()) s["layers"] = span.layers;
    j["span"] = s;
  }
  // Written only when on, so configs and checkpoints of plain models read as before.
  if (qk_norm) j["qk_norm"] = true;
  if (z_loss != 0) j["z_loss"] = z_loss;
  return j;
}

ModelConfig ModelConfig::from_json(const json& j) {
  if (!j.is_object()) fail("config: expected a JSON object");
  static const char* known[] = {"n_layer", "n_head", "d_model", "seq_len",
                                "vocab_size", "eot_token", "n_local", "window",
                                "span",    "qk_norm", "z_loss", "comment"};
  for (auto& [key, _] : j.items()) {
    bool ok = false;
    for (const char* k : known) ok |= key == k;
    if (!ok) fail("config: unknown key '", key, "'");
  }
  ModelConfig c;
  c.n_layer = get_int(j, "n_layer", c.n_layer);
  c.n_head = get_int(j, "n_head", c.n_head);
  c.d_model = get_int(j, "d_model", c.d_model);
  c.seq_len = get_int(j, "seq_len", c.seq_len);
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size);
  // Configs and checkpoints written before eot_token existed get the default rule.
  c.eot_token = get_int(j, "eot_token", -1);
  if (j.contains("eot_token") && c.eot_token < 0)
    fail("config: eot_token must be >= 0, got ", c.eot_token);
  c.window = get_int(j, "window", c.window);
  if (j.contains("qk_norm")) {
    if (!j["qk_norm"].is_boolean()) fail("config: qk_norm must be true or false");
    c.qk_norm = j["qk_norm"].get<bool>();
  }
  if (j.contains("z_loss")) {
    if (!j["z_loss"].is_number()) fail("config: z_loss must be a number");
    c.z_loss = j["z_loss"].get<double>();
  }
  if (j.contains("n_local")) {
    const json& nl = j["n_local"];
    if (nl.is_number_integer()) {
      c.n_local = {n_local_entry(nl)};
    } else if (nl.is_array()) {
      for (const json& x : nl) c.n_local.push_back(n_local_entry(x));
      if (c.n_local.empty()) fail("config: n_local must not be an empty list");
    } else {
      fail("config: n_local must be an integer or a list of integers");
    }
  }
  if (j.contains("span") && !j["span"].is_null()) {
    const json& s = j["span"];
    if (s.is_string()) {
      c.span = SpanConfig::parse(s.get<std::string>());
    } else if (s.is_object()) {
      for (auto& [key, val] : s.items()) {
        if (key == "q") c.span.q = target_from_json(val, "q");
        else if (key == "k") c.span.k = target_from_json(val, "k");
        else if (key == "v") c.span.v = target_from_json(val, "v");
        else if (key == "layers") {
          if (!val.is_array()) fail("config: span.layers must be a list of booleans");
          for (const json& x : val) {
            if (!x.is_boolean() && !x.is_number_integer())
              fail("config: span.layers entries must be true/false");
            // Compared as int64, so a huge 1 << 32 is on (get<int> would wrap it to 0).
            c.span.layers.push_back(x.is_boolean() ? x.get<bool>() : x.get<int64_t>() != 0);
          }
        } else {
          fail("config: unknown key span.", key);
        }
      }
    } else {
      fail("config: span must be an object or a string such as \"q:cross:1.5:1\"");
    }
  }
  c.normalize_and_validate();
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  // An ifstream opens a directory, and reading it then throws a bare ios_base::failure.
  if (std::filesystem::is_directory(path)) fail("config file '", path, "' is a directory");
  std::ifstream in(path);
  if (!in) fail("cannot open config file '", path, "'");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for 1e400
    fail("config file '", path, "' is not valid JSON: ", e.what());
  }
  try {
    return from_json(j);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

bool operator==(const SpanTarget& a, const SpanTarget& b) {
  return a.enabled == b.enabled && a.basis == b.basis && a.alpha_par == b.alpha_par &&
         a.alpha_perp == b.alpha_perp;
}
bool operator==(const SpanConfig& a, const SpanConfig& b) {
  return a.q == b.q && a.k == b.k && a.v == b.v && a.layers == b.layers;
}
bool operator==(const ModelConfig& a, const ModelConfig& b) {
  return a.to_json() == b.to_json();
}

}  // namespace lsgpt
