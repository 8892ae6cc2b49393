// lsgpt train: flags map one to one onto TrainConfig; with --resume the
// checkpoint's settings are the base and only explicitly given flags count,
// and with --resume or --init-from the same holds for the model flags.
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/error.h"
#include "train/trainer.h"

namespace lsgpt::cli {
namespace {

struct TrainFlags {
  ModelOptions model;
  TrainConfig train;
  std::string data_dir, resume, init_from;
  bool quiet = false;
  bool overwrite = false;
  // (option, TrainConfig JSON key) for the flags a resumed run may pass on.
  std::vector<std::pair<CLI::Option*, std::string>> keyed;
};

void run_train(TrainFlags& f) {
  TrainOptions o;
  TrainConfig& t = f.train;
  if (!f.data_dir.empty()) {
    if (t.train_data.empty()) t.train_data = f.data_dir + "/train.bin";
    if (t.valid_data.empty()) t.valid_data = f.data_dir + "/valid.bin";
  }
  o.train = t;
  o.resume = f.resume;
  o.init_from = f.init_from;
  o.quiet = f.quiet;
  o.overwrite = f.overwrite;
  if (!f.resume.empty() && !f.init_from.empty())
    fail("give either --resume or --init-from, not both");
  if (!f.resume.empty()) {
    const nlohmann::json all = t.to_json();
    for (auto& [opt, key] : f.keyed)
      if (opt->count() > 0) o.explicit_train[key] = all.at(key);
    if (!f.data_dir.empty()) {
      o.explicit_train["train_data"] = t.train_data;
      o.explicit_train["valid_data"] = t.valid_data;
    }
  }
  // A checkpoint brings its model: configs/default.json must not count as a
  // request to change it, only what was typed.
  if (!f.resume.empty() || !f.init_from.empty()) o.explicit_model = f.model.given_json();
  else o.model = f.model.resolve();
  train_model(o);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Train a model on token files made by `lsgpt prepare` (CPU or CUDA)");
  TrainFlags& f = *flags;
  TrainConfig& t = f.train;
  f.model.add_to(cmd);
  auto keyed = [&](CLI::Option* opt, const char* key) {
    f.keyed.emplace_back(opt, key);
    return opt;
  };
  const char* data = "Data and output";
  keyed(cmd->add_option("--train", t.train_data, "training token file")->group(data),
        "train_data");
  keyed(cmd->add_option("--valid", t.valid_data, "validation token file")->group(data),
        "valid_data");
  cmd->add_option("--data-dir", f.data_dir, "directory holding train.bin and valid.bin")
      ->group(data);
  keyed(cmd->add_option("--out-dir", t.out_dir,
                        "run directory: checkpoint.ckpt, metrics.jsonl, plots")
            ->capture_default_str()
            ->group(data),
        "out_dir");
  keyed(cmd->add_option("--device", t.device, "cpu or cuda")->capture_default_str()->group(data),
        "device");
  const char* opt = "Optimisation";
  keyed(cmd->add_option("--batch-size", t.batch_size, "sequences per micro-batch")
            ->capture_default_str()->group(opt), "batch_size");
  keyed(cmd->add_option("--train-seq-len", t.seq_len,
                        "tokens per training sequence (default: the model's context)")
            ->group(opt), "seq_len");
  keyed(cmd->add_option("--grad-accum", t.grad_accum, "micro-batches per optimizer step")
            ->capture_default_str()->group(opt), "grad_accum");
  keyed(cmd->add_option("--steps", t.steps, "optimizer steps (defines the LR schedule)")
            ->capture_default_str()->group(opt), "steps");
  keyed(cmd->add_option("--lr", t.lr, "peak learning rate")->capture_default_str()->group(opt),
        "lr");
  keyed(cmd->add_option("--min-lr-ratio", t.min_lr_ratio, "final LR as a fraction of --lr")
            ->capture_default_str()->group(opt), "min_lr_ratio");
  keyed(cmd->add_option("--warmup", t.warmup, "linear warm-up steps")
            ->capture_default_str()->group(opt), "warmup");
  keyed(cmd->add_option("--weight-decay", t.weight_decay, "AdamW decoupled weight decay")
            ->capture_default_str()->group(opt), "weight_decay");
  keyed(cmd->add_option("--beta1", t.beta1, "AdamW beta1")->capture_default_str()->group(opt),
        "beta1");
  keyed(cmd->add_option("--beta2", t.beta2, "AdamW beta2")->capture_default_str()->group(opt),
        "beta2");
  keyed(cmd->add_option("--clip", t.clip, "global gradient-norm clip (0: off)")
            ->capture_default_str()->group(opt), "clip");
  const char* adagc = "AdaGC per-tensor clipping (docs/STABILISERS.md)";
  keyed(cmd->add_flag("--adagc", t.adagc,
                      "AdaGC adaptive per-tensor gradient clipping instead of --clip")
            ->group(adagc), "adagc");
  keyed(cmd->add_option("--adagc-warmup", t.adagc_warmup,
                        "AdaGC: steps of global clipping at --adagc-lambda-abs first")
            ->capture_default_str()->group(adagc), "adagc_warmup");
  keyed(cmd->add_option("--adagc-lambda-abs", t.adagc_lambda_abs,
                        "AdaGC: global clip norm during its warm-up")
            ->capture_default_str()->group(adagc), "adagc_lambda_abs");
  keyed(cmd->add_option("--adagc-lambda-rel", t.adagc_lambda_rel,
                        "AdaGC: clip each tensor at this times the EMA of its clipped norms")
            ->capture_default_str()->group(adagc), "adagc_lambda_rel");
  keyed(cmd->add_option("--adagc-beta", t.adagc_beta, "AdaGC: EMA factor, in [0, 1)")
            ->capture_default_str()->group(adagc), "adagc_beta");
  keyed(cmd->add_option("--seed", t.seed, "initialisation and data-order seed")
            ->check(kUnsigned64)->capture_default_str()->group(opt), "seed");
  keyed(cmd->add_option("--sampler", t.sampler,
                        "where training windows start: uniform (any position; windows cross "
                        "document boundaries) or documents (only inside one document, i.e. "
                        "one book of prepare --dataset pg-books, when it has at least "
                        "seq_len + 1 tokens; a shorter document gets one window from its start, "
                        "crossing into the next). Both are a pure function of --seed and the "
                        "step, so --resume continues the same sequence")
            ->check(CLI::IsMember({"uniform", "documents"}))
            ->capture_default_str()->group(opt), "sampler");
  const char* run = "Run control";
  keyed(cmd->add_option("--eval-every", t.eval_every, "steps between evaluations (0: end only)")
            ->capture_default_str()->group(run), "eval_every");
  keyed(cmd->add_option("--eval-batches", t.eval_batches,
                        "validation batches per intermediate evaluation")
            ->capture_default_str()->group(run), "eval_batches");
  keyed(cmd->add_option("--final-eval-batches", t.final_eval_batches,
                        "validation batches for the evaluation at the end (0: whole file)")
            ->capture_default_str()->group(run), "final_eval_batches");
  keyed(cmd->add_option("--checkpoint-every", t.checkpoint_every,
                        "steps between checkpoints (0: end only)")
            ->capture_default_str()->group(run), "checkpoint_every");
  keyed(cmd->add_option("--log-every", t.log_every, "steps between progress lines")
            ->capture_default_str()->group(run), "log_every");
  keyed(cmd->add_option("--max-time", t.max_time,
                        "stop cleanly after this many seconds (0: no limit)")
            ->group(run), "max_time");
  keyed(cmd->add_option("--stop-at", t.stop_at,
                        "stop after this many steps, keeping the schedule of --steps")
            ->group(run), "stop_at");
  keyed(cmd->add_option("--max-nonfinite", t.max_nonfinite,
                        "consecutive non-finite steps before the run stops")
            ->capture_default_str()->group(run), "max_nonfinite");
  cmd->add_option("--resume", f.resume, "continue the run saved in this checkpoint")
      ->group(run);
  cmd->add_option("--init-from", f.init_from,
                  "start a new run from this checkpoint's weights (e.g. from `lsgpt import`)")
      ->group(run);
  cmd->add_flag("--quiet", f.quiet, "no progress lines")->group(run);
  cmd->add_flag("--overwrite", f.overwrite,
                "start in an --out-dir that already holds a run, replacing its checkpoint "
                "and metrics")
      ->group(run);
  cmd->add_option("--fault", t.fault,
                  "testing: inject nan-grad@STEP, nan-param@STEP, error@STEP[:RANK] or "
                  "signal@STEP[:RANK]")
      ->group("");
  cmd->callback([flags] { run_train(*flags); });
}

}  // namespace lsgpt::cli
