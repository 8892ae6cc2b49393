#include "train/train_config.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace lsgpt {

using json = nlohmann::json;

namespace {

// The checksum is written as 16 hex digits: JSON readers that hold numbers
// as doubles would round a 64-bit integer.
json identity_json(const DataIdentity& id) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016" PRIx64, id.fnv1a64);
  return json{{"tokens", id.tokens}, {"fnv1a64", hex}};
}

DataIdentity identity_from_json(const json& j, const char* key) {
  DataIdentity id;
  if (!j.contains(key)) return id;
  const json& v = j.at(key);
  const std::string hex = v.at("fnv1a64").get<std::string>();
  size_t used = 0;
  try {
    id.fnv1a64 = std::stoull(hex, &used, 16);
  } catch (const std::exception&) {
    used = 0;
  }
  if (hex.empty() || used != hex.size()) fail(key, ".fnv1a64 '", hex, "' is not a hex number");
  id.tokens = v.at("tokens").get<uint64_t>();
  return id;
}

}  // namespace

std::string DataIdentity::to_string() const {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016" PRIx64, fnv1a64);
  return std::to_string(tokens) + " tokens, FNV-1a 64 " + hex;
}

void TrainConfig::validate() const {
  if (batch_size < 1) fail("--batch-size must be >= 1, got ", batch_size);
  // seq_len is --train-seq-len; --seq-len is the model's context.
  if (seq_len < 0) fail("--train-seq-len must be >= 0 (0: the model's context), got ", seq_len);
  if (grad_accum < 1) fail("--grad-accum must be >= 1, got ", grad_accum);
  if (steps < 1) fail("--steps must be >= 1, got ", steps);
  if (!(lr > 0) || !std::isfinite(lr)) fail("--lr must be a positive number, got ", lr);
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) fail("--min-lr-ratio must be in [0, 1]");
  if (warmup < 0) fail("--warmup must be >= 0");
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) fail("--weight-decay must be >= 0");
  if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
    fail("AdamW betas must be in [0, 1)");
  if (!(eps > 0)) fail("AdamW eps must be > 0");
  if (!(clip >= 0) || !std::isfinite(clip)) fail("--clip must be >= 0 (0 disables clipping)");
  if (adagc_warmup < 1) fail("--adagc-warmup must be >= 1, got ", adagc_warmup);
  if (!(adagc_lambda_abs > 0) || !std::isfinite(adagc_lambda_abs))
    fail("--adagc-lambda-abs must be a finite number > 0, got ", adagc_lambda_abs);
  if (!(adagc_lambda_rel > 0) || !std::isfinite(adagc_lambda_rel))
    fail("--adagc-lambda-rel must be a finite number > 0, got ", adagc_lambda_rel);
  if (!(adagc_beta >= 0 && adagc_beta < 1))
    fail("--adagc-beta must be in [0, 1), got ", adagc_beta);
  if (eval_every < 0 || checkpoint_every < 0 || log_every < 1)
    fail("--eval-every and --checkpoint-every must be >= 0, --log-every >= 1");
  if (eval_batches < 1) fail("--eval-batches must be >= 1");
  if (final_eval_batches < 0) fail("--final-eval-batches must be >= 0 (0: the whole file)");
  if (!(max_time >= 0)) fail("--max-time must be >= 0");
  if (stop_at < 0) fail("--stop-at must be >= 0");
  if (max_nonfinite < 1) fail("--max-nonfinite must be >= 1");
  if (sampler != "uniform" && sampler != "documents")
    fail("--sampler must be uniform or documents, not '", sampler, "'");
  if (train_data.empty()) fail("no training data: pass --train FILE (made by `lsgpt prepare`)");
  if (valid_data.empty()) fail("no validation data: pass --valid FILE (made by `lsgpt prepare`)");
}

json TrainConfig::schedule_json() const {
  return json{{"batch_size", batch_size}, {"seq_len", seq_len},      {"grad_accum", grad_accum},
              {"steps", steps},           {"lr", lr},                {"min_lr_ratio", min_lr_ratio},
              {"warmup", warmup},         {"weight_decay", weight_decay},
              {"beta1", beta1},           {"beta2", beta2},          {"eps", eps},
              {"clip", clip},             {"seed", seed},            {"sampler", sampler},
              {"adagc", adagc},           {"adagc_warmup", adagc_warmup},
              {"adagc_lambda_abs", adagc_lambda_abs},
              {"adagc_lambda_rel", adagc_lambda_rel},
              {"adagc_beta", adagc_beta}};
}

json TrainConfig::to_json() const {
  json j = schedule_json();
  j["device"] = device;
  j["train_data"] = train_data;
  j["valid_data"] = valid_data;
  if (train_id.known()) j["train_data_id"] = identity_json(train_id);
  if (valid_id.known()) j["valid_data_id"] = identity_json(valid_id);
  j["out_dir"] = out_dir;
  j["eval_every"] = eval_every;
  j["eval_batches"] = eval_batches;
  j["final_eval_batches"] = final_eval_batches;
  j["checkpoint_every"] = checkpoint_every;
  j["log_every"] = log_every;
  j["max_time"] = max_time;
  j["stop_at"] = stop_at;
  j["max_nonfinite"] = max_nonfinite;
  return j;
}

TrainConfig TrainConfig::from_json(const json& j) {
  TrainConfig c;
  auto get = [&](const char* key, auto& field) {
    if (j.contains(key)) field = j.at(key).get<std::decay_t<decltype(field)>>();
  };
  try {
    get("device", c.device), get("train_data", c.train_data), get("valid_data", c.valid_data);
    get("out_dir", c.out_dir), get("batch_size", c.batch_size), get("seq_len", c.seq_len);
    get("grad_accum", c.grad_accum), get("steps", c.steps), get("lr", c.lr);
    get("min_lr_ratio", c.min_lr_ratio), get("warmup", c.warmup);
    get("weight_decay", c.weight_decay), get("beta1", c.beta1), get("beta2", c.beta2);
    get("eps", c.eps), get("clip", c.clip), get("eval_every", c.eval_every);
    get("eval_batches", c.eval_batches), get("checkpoint_every", c.checkpoint_every);
    get("final_eval_batches", c.final_eval_batches);
    get("log_every", c.log_every), get("seed", c.seed), get("max_time", c.max_time);
    get("stop_at", c.stop_at), get("max_nonfinite", c.max_nonfinite);
    // Absent in checkpoints written before AdaGC: off, with the defaults.
    get("adagc", c.adagc), get("adagc_warmup", c.adagc_warmup);
    get("adagc_lambda_abs", c.adagc_lambda_abs), get("adagc_lambda_rel", c.adagc_lambda_rel);
    get("adagc_beta", c.adagc_beta);
    get("sampler", c.sampler);  // absent from checkpoints made before it: uniform
    c.train_id = identity_from_json(j, "train_data_id");
    c.valid_id = identity_from_json(j, "valid_data_id");
  } catch (const json::exception& e) {
    fail("training settings: ", e.what());
  }
  return c;
}

double learning_rate(const TrainConfig& c, long step) {
  if (step < c.warmup) return c.lr * double(step + 1) / double(c.warmup);
  const double min_lr = c.lr * c.min_lr_ratio;
  const long decay_steps = c.steps - c.warmup;
  if (decay_steps <= 0) return c.lr;
  double progress = double(step - c.warmup) / double(decay_steps);
  progress = std::min(1.0, std::max(0.0, progress));
  return min_lr + 0.5 * (c.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace lsgpt
