// lsgpt eval: loss and perplexity of a checkpoint on a token file.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/checkpoint_model.h"
#include "cli/commands.h"
#include "core/error.h"
#include "data/batch_sampler.h"
#include "data/token_file.h"
#include "infer/npy.h"
#include "train/evaluate.h"

namespace lsgpt::cli {
namespace {

struct EvalFlags {
  std::string checkpoint, data, device = "cpu", logits_out;
  int batch_size = 8, seq_len = 0;
  long max_batches = 0;
};

void run_eval(const EvalFlags& f) {
  if (f.data.empty()) fail("no data given: pass --data FILE (made by `lsgpt prepare`)");
  if (f.batch_size < 1) fail("--batch-size must be >= 1");
  if (f.max_batches < 0) fail("--max-batches must be >= 0 (0: the whole file), got ", f.max_batches);
  // --logits-out naming the checkpoint or the data used to replace it with the .npy.
  if (!f.logits_out.empty())
    refuse_output_over_inputs("eval: --logits-out", f.logits_out, {f.checkpoint, f.data});
  LoadedModel m = load_model(f.checkpoint, f.device);
  const ModelConfig& cfg = m.model->config();
  const int T = f.seq_len ? f.seq_len : cfg.seq_len;
  if (T < 1 || T > cfg.seq_len)
    fail("--seq-len must be in 1..", cfg.seq_len, " (the model's context), got ", T);
  TokenFile file(f.data, cfg.vocab_size);
  const EvalResult r = evaluate_tokens(*m.model, file, f.batch_size, T, f.max_batches);
  if (!f.logits_out.empty()) {
    // The first window alone, so the numbers line up with a reference run on
    // the same tokens.
    EvalBatches first(file, 1, T, 1);
    std::vector<int32_t> inputs(T), targets(T);
    first.fill(0, inputs.data(), targets.data());
    m.model->evaluate(inputs.data(), targets.data(), 1, T);
    write_npy_f32(f.logits_out, m.model->logits_row_block(0), {T, cfg.vocab_size});
  }
  std::printf("%s\n", nlohmann::json{{"checkpoint", f.checkpoint},
                                     {"data", f.data},
                                     {"step", m.step},
                                     {"loss", r.loss},
                                     {"perplexity", r.perplexity},
                                     {"tokens", r.tokens},
                                     {"batches", r.batches}}
                          .dump()
                          .c_str());
  std::fprintf(stderr, "%s: loss %.4f | perplexity %.2f | %ld tokens\n", f.data.c_str(), r.loss,
               r.perplexity, r.tokens);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto f = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand("eval", "Loss and perplexity of a checkpoint on a token file");
  cmd->add_option("--checkpoint", f->checkpoint, "checkpoint file")->required();
  cmd->add_option("--data", f->data, "token file made by `lsgpt prepare`")->required();
  cmd->add_option("--device", f->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--batch-size", f->batch_size, "sequences per batch")->capture_default_str();
  cmd->add_option("--seq-len", f->seq_len, "tokens per window (default: the model's context)");
  cmd->add_option("--max-batches", f->max_batches, "evaluate only this many batches (0: all)");
  cmd->add_option("--logits-out", f->logits_out,
                  "also write the first window's logits [T, V] as float32 .npy");
  cmd->callback([f] { run_eval(*f); });
}

}  // namespace lsgpt::cli
