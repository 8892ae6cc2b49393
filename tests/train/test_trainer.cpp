// The training loop end to end on tiny models and synthetic token files:
// bit-identical resume, non-finite handling, refusal of bad resumes and data.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "data/token_file.h"
#include "io/checkpoint.h"
#include "train/run_setup.h"
#include "train/trainer.h"

namespace lsgpt {
namespace {
namespace test_trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Fixture {
  fs::path dir;
  std::string train, valid;
};

// A corpus with learnable structure: a noisy repeating pattern.
Fixture make_data(const std::string& name, size_t n_train = 4000, size_t n_valid = 600,
                  int vocab = 64) {
  Fixture f;
  f.dir = fs::path(::testing::TempDir()) / ("lsgpt_trainer_" + name);
  fs::remove_all(f.dir);
  fs::create_directories(f.dir);
  std::mt19937_64 rng(5);
  auto corpus = [&](size_t n) {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; ++i) t[i] = rng() % 5 == 0 ? int32_t(rng() % vocab) : int32_t(i % 11);
    return t;
  };
  f.train = (f.dir / "train.bin").string();
  f.valid = (f.dir / "valid.bin").string();
  write_token_file(f.train, vocab, corpus(n_train));
  write_token_file(f.valid, vocab, corpus(n_valid));
  return f;
}

TrainOptions tiny_options(const Fixture& f, const std::string& out) {
  TrainOptions o;
  o.model.n_layer = 2;
  o.model.n_head = 2;
  o.model.d_model = 16;
  o.model.seq_len = 16;
  o.model.vocab_size = 64;
  o.model.n_local = {1};
  o.model.window = 4;
  o.train.train_data = f.train;
  o.train.valid_data = f.valid;
  o.train.out_dir = (f.dir / out).string();
  o.train.batch_size = 4;
  o.train.grad_accum = 2;
  o.train.steps = 12;
  o.train.warmup = 3;
  o.train.lr = 3e-3;
  o.train.eval_every = 4;
  o.train.eval_batches = 2;
  o.train.checkpoint_every = 0;
  o.quiet = true;
  return o;
}

std::vector<json> read_records(const std::string& path, const std::string& type) {
  std::ifstream in(path);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line)) {
    json r = json::parse(line);
    if (r["type"] == type) out.push_back(r);
  }
  return out;
}

TEST(Trainer, LossFallsAndArtifactsAreWritten) {
  const Fixture f = make_data("learn");
  TrainOptions o = tiny_options(f, "run");
  o.train.steps = 40;
  const TrainResult r = train_model(o);
  EXPECT_EQ(r.steps, 40);
  const auto train = read_records(r.metrics, "train");
  ASSERT_EQ(train.size(), 40u);
  EXPECT_LT(train.back()["loss"].get<double>(), train.front()["loss"].get<double>() - 0.5);
  EXPECT_TRUE(std::isfinite(r.val_loss));
  EXPECT_NEAR(r.val_perplexity, std::exp(r.val_loss), 1e-9 * r.val_perplexity);
  // The logit-explosion signal: one value per layer and head.
  ASSERT_EQ(train[0]["max_logit"].size(), 2u);
  ASSERT_EQ(train[0]["max_logit"][0].size(), 2u);
  const Checkpoint ck = load_checkpoint(r.checkpoint);
  EXPECT_EQ(ck.step, 40);
  EXPECT_EQ(ck.adam_m.size(), ck.params.size());
}

// A run split at step 5 and resumed equals the same run done at once, to the
// bit; `setup` adds settings (the stabilisers) to both.
void check_resume_bit_identical(const std::string& name,
                                const std::function<void(TrainOptions&)>& setup) {
  const Fixture f = make_data(name);
  TrainOptions whole = tiny_options(f, "whole");
  setup(whole);
  const TrainResult a = train_model(whole);

  TrainOptions first = tiny_options(f, "split");
  setup(first);
  first.train.stop_at = 5;
  const TrainResult b1 = train_model(first);
  EXPECT_TRUE(b1.stopped_early);
  EXPECT_EQ(b1.steps, 5);
  TrainOptions second = tiny_options(f, "split");
  setup(second);
  second.resume = b1.checkpoint;
  const TrainResult b2 = train_model(second);
  EXPECT_EQ(b2.steps, 12);

  const auto la = read_records(a.metrics, "train");
  const auto lb = read_records(b2.metrics, "train");  // appended: steps 1..5 then 6..12
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(la[i]["step"], lb[i]["step"]);
    // Exact equality of doubles, not a tolerance.
    EXPECT_EQ(la[i]["loss"].get<double>(), lb[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(la[i]["grad_norm"].get<double>(), lb[i]["grad_norm"].get<double>());
    EXPECT_EQ(la[i].value("z_loss", json()), lb[i].value("z_loss", json()));
    EXPECT_EQ(la[i].value("adagc_clipped", json()), lb[i].value("adagc_clipped", json()));
  }
  EXPECT_EQ(load_checkpoint(a.checkpoint).params, load_checkpoint(b2.checkpoint).params);
  EXPECT_EQ(load_checkpoint(a.checkpoint).state.value("adagc_gamma", json()),
            load_checkpoint(b2.checkpoint).state.value("adagc_gamma", json()));
  EXPECT_EQ(a.val_loss, b2.val_loss);
}

TEST(Trainer, ResumeIsBitIdentical) {
  check_resume_bit_identical("resume", [](TrainOptions&) {});
}

// With every stabiliser on; AdaGC's warm-up (3 steps) ends before the split,
// so the resumed run continues from the stored per-tensor EMA.
TEST(Trainer, ResumeIsBitIdenticalWithStabilisers) {
  check_resume_bit_identical("resume_stab", [](TrainOptions& o) {
    o.model.qk_norm = true;
    o.model.z_loss = 1e-3;
    o.train.adagc = true;
    o.train.adagc_warmup = 3;
    o.train.adagc_lambda_rel = 1.0;  // tight, so tensors are clipped in a short run
  });
}

TEST(Trainer, AdaGCLogsClippedTensorsAndStoresItsState) {
  const Fixture f = make_data("adagc");
  TrainOptions o = tiny_options(f, "run");
  o.train.adagc = true;
  o.train.adagc_warmup = 2;
  o.train.adagc_lambda_rel = 0.5;  // below 1: every tensor is clipped after the warm-up
  o.model.z_loss = 1e-4;
  const TrainResult r = train_model(o);
  const auto train = read_records(r.metrics, "train");
  ASSERT_EQ(train.size(), 12u);
  const Checkpoint ck = load_checkpoint(r.checkpoint);
  const size_t tensors = ck.state.at("adagc_gamma").size();
  EXPECT_EQ(tensors, 2u + 12u * 2 + 2u);  // wte, wpe, 12 per layer, ln_f
  // Warm-up: global clipping, all tensors or none; then per tensor.
  for (size_t i = 0; i < 2; ++i) {
    const size_t c = train[i]["adagc_clipped"].get<size_t>();
    EXPECT_TRUE(c == 0 || c == tensors) << "step " << i + 1 << ": " << c;
  }
  size_t clipped_after = 0;
  for (size_t i = 2; i < train.size(); ++i) {
    EXPECT_LE(train[i]["adagc_clipped"].get<size_t>(), tensors);
    clipped_after += train[i]["adagc_clipped"].get<size_t>();
  }
  EXPECT_GT(clipped_after, 5 * tensors);
  EXPECT_GT(train[0]["z_loss"].get<double>(), 0.0);
  for (const json& g : ck.state["adagc_gamma"]) EXPECT_GT(g.get<double>(), 0.0);
  // AdaGC defines the loss sequence: a resume may not switch it off.
  TrainOptions off = tiny_options(f, "run");
  off.resume = r.checkpoint;
  off.explicit_train = json{{"adagc", false}};
  EXPECT_THROW(train_model(off), Error);
}

TEST(Trainer, NonFiniteGradientSkipsTheUpdateAndContinues) {
  const Fixture f = make_data("nan_grad");
  TrainOptions o = tiny_options(f, "run");
  o.train.steps = 6;
  o.train.fault = "nan-grad@3";
  const TrainResult r = train_model(o);
  EXPECT_EQ(r.steps, 6);
  EXPECT_EQ(r.skipped, 1);
  const auto train = read_records(r.metrics, "train");
  ASSERT_EQ(train.size(), 6u);
  EXPECT_TRUE(train[2].value("skipped", false));
  EXPECT_TRUE(train[2]["grad_norm"].is_null());
  EXPECT_FALSE(train[3].value("skipped", false));
  for (float p : load_checkpoint(r.checkpoint).params) ASSERT_TRUE(std::isfinite(p));
}

TEST(Trainer, PersistentNonFiniteLossStopsTheRunWithoutABrokenCheckpoint) {
  const Fixture f = make_data("nan_param");
  TrainOptions o = tiny_options(f, "run");
  o.train.steps = 10;
  o.train.checkpoint_every = 1;
  o.train.fault = "nan-param@4";
  o.train.max_nonfinite = 2;
  try {
    train_model(o);
    FAIL() << "a run with NaN parameters finished";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
  // The last checkpoint is the last good state: step 3, finite.
  const Checkpoint ck = load_checkpoint(o.train.out_dir + "/checkpoint.ckpt");
  EXPECT_EQ(ck.step, 3);
  for (float p : ck.params) ASSERT_TRUE(std::isfinite(p));
}

TEST(Trainer, ResumeRefusesChangedScheduleOrModel) {
  const Fixture f = make_data("resume_refuse");
  TrainOptions o = tiny_options(f, "run");
  o.train.stop_at = 2;
  const TrainResult r = train_model(o);
  TrainOptions changed_lr = tiny_options(f, "run");
  changed_lr.resume = r.checkpoint;
  changed_lr.explicit_train = json{{"lr", 0.5}};
  EXPECT_THROW(train_model(changed_lr), Error);
  TrainOptions changed_model = tiny_options(f, "run");
  changed_model.resume = r.checkpoint;
  changed_model.explicit_model = json{{"window", 5}};
  EXPECT_THROW(train_model(changed_model), Error);
  // Settings that do not define the loss sequence may change.
  TrainOptions more_logging = tiny_options(f, "run");
  more_logging.resume = r.checkpoint;
  more_logging.explicit_train = json{{"eval_every", 3}};
  EXPECT_EQ(train_model(more_logging).steps, 12);
}

// Checkpoints written before data identities were recorded hold the data
// paths as typed: an absolute one is used (with a warning), a relative one,
// which depends on a working directory nobody remembers, must be named again.
TEST(Trainer, ResumesOldCheckpointsWithoutDataIdentity) {
  const Fixture f = make_data("old_ckpt");
  TrainOptions o = tiny_options(f, "run");
  o.train.stop_at = 2;
  const TrainResult r = train_model(o);
  Checkpoint ck = load_checkpoint(r.checkpoint);
  EXPECT_EQ(ck.train["train_data_id"]["tokens"], 4000);
  EXPECT_EQ(ck.train["valid_data_id"]["tokens"], 600);
  ck.train.erase("train_data_id");
  ck.train.erase("valid_data_id");
  ck.train["train_data"] = "train.bin";
  save_checkpoint(r.checkpoint, ck);

  TrainOptions resume;
  resume.quiet = true;
  resume.resume = r.checkpoint;
  resume.train.stop_at = 3;
  try {
    train_model(resume);
    FAIL() << "a relative data path without identity was trusted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("relative path 'train.bin'"), std::string::npos)
        << e.what();
  }
  resume.explicit_train = json{{"train_data", f.train}, {"stop_at", 3}};
  EXPECT_EQ(train_model(resume).steps, 3);
  // That run recorded the identities, so from now on the data is checked.
  EXPECT_EQ(load_checkpoint(r.checkpoint).train["train_data_id"]["tokens"], 4000);
}

TEST(Trainer, ModelSettingsFromACheckpoint) {
  ModelConfig stored;
  stored.n_layer = 2, stored.n_head = 2, stored.d_model = 16, stored.seq_len = 16;
  stored.n_local = {1, 0};
  stored.normalize_and_validate();
  // Nothing given: the checkpoint's model, untouched (n_local stays per layer).
  EXPECT_TRUE(apply_model_settings(stored, json::object(), "c", false) == stored);
  EXPECT_TRUE(apply_model_settings(stored, json{{"n_layer", 2}, {"n_head", 2}}, "c", true) ==
              stored);
  // init-from: non-shape settings apply; span "off" (null) clears.
  ModelConfig spanned = stored;
  spanned.span = SpanConfig::parse("q:cross:2:1");
  const ModelConfig tuned = apply_model_settings(
      spanned, json{{"n_local", json::array({2})}, {"window", 7}, {"span", nullptr}}, "c", false);
  EXPECT_EQ(tuned.n_local, (std::vector<int>{2, 2}));
  EXPECT_EQ(tuned.window, 7);
  EXPECT_FALSE(tuned.span.any());
  auto message = [&](const json& given, bool resuming) {
    try {
      apply_model_settings(stored, given, "c.ckpt", resuming);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string shape = message(json{{"d_model", 32}, {"window", 7}}, false);
  EXPECT_NE(shape.find("d_model (--d-model): checkpoint 16, given 32"), std::string::npos) << shape;
  EXPECT_EQ(shape.find("window ("), std::string::npos) << shape;
  const std::string resumed = message(json{{"window", 7}, {"n_layer", 2}}, true);
  EXPECT_NE(resumed.find("window (--window): checkpoint 100, given 7"), std::string::npos)
      << resumed;
  EXPECT_EQ(resumed.find("n_layer"), std::string::npos) << resumed;
  EXPECT_NE(message(json{{"n_local", json::array({3})}}, false).find("n_local"), std::string::npos);
  // Stabilisers: z-loss may change with --init-from; QK-norm adds weights, so
  // it is part of the shape; neither may change on resume.
  EXPECT_EQ(apply_model_settings(stored, json{{"z_loss", 1e-4}}, "c", false).z_loss, 1e-4);
  const std::string qk = message(json{{"qk_norm", true}}, false);
  EXPECT_NE(qk.find("qk_norm (--qk-norm): checkpoint off, given true"), std::string::npos) << qk;
  const std::string z = message(json{{"z_loss", 1e-4}}, true);
  EXPECT_NE(z.find("z_loss (--z-loss): checkpoint off, given 0.0001"), std::string::npos) << z;
}

TEST(Trainer, RefusesTooShortOrForeignData) {
  const Fixture f = make_data("short", 10, 600);
  TrainOptions o = tiny_options(f, "run");
  try {
    train_model(o);
    FAIL() << "10 tokens accepted for windows of 17";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("10"), std::string::npos) << e.what();
  }
  const Fixture g = make_data("foreign", 4000, 600, 100);  // vocabulary 100, model has 64
  TrainOptions p = tiny_options(g, "run");
  EXPECT_THROW(train_model(p), Error);
  TrainOptions missing = tiny_options(f, "run");
  missing.train.train_data = (f.dir / "nope.bin").string();
  EXPECT_THROW(train_model(missing), Error);
}

TEST(Trainer, SpanRunsChangeGradientsButNotTheFirstLoss) {
  const Fixture f = make_data("span");
  TrainOptions plain = tiny_options(f, "plain");
  plain.train.steps = 3;
  TrainOptions span = tiny_options(f, "span");
  span.train.steps = 3;
  span.model.span = SpanConfig::parse("q:cross:2:1,k:cross:2:1");
  const auto a = read_records(train_model(plain).metrics, "train");
  const auto b = read_records(train_model(span).metrics, "train");
  EXPECT_EQ(a[0]["loss"].get<double>(), b[0]["loss"].get<double>());
  EXPECT_NE(a[0]["grad_norm"].get<double>(), b[0]["grad_norm"].get<double>());
  EXPECT_NE(a[2]["loss"].get<double>(), b[2]["loss"].get<double>());
}

}  // namespace test_trainer
}  // namespace
}  // namespace lsgpt
