// Where a run's model, settings, starting weights and data come from, for the
// three ways to start one: a new run (everything from TrainOptions), --resume
// (everything from the checkpoint; only what the user gave explicitly is
// checked or applied) and --init-from (a new run whose model comes from the
// checkpoint, with the user's non-shape model settings applied).
//
// Data is known by content, not by path text: a run records the absolute path
// and the identity (token count, FNV-1a 64) of each token file, and a resumed
// run reads the same content, whatever path reaches it, or stops with an
// error naming the file and the difference.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "data/token_file.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace lsgpt {

struct RunSetup {
  ModelConfig model;
  TrainConfig train;       // data paths absolute; data identities as recorded, if any
  Checkpoint start;        // resume: the whole state; init-from: the weights; else empty
  bool resuming = false;
  std::string checkpoint;  // the --resume or --init-from file
};

// Settles the model and training settings; reads no token file.
RunSetup setup_run(const TrainOptions& options);

// Refuses (lsgpt::Error naming --resume, --overwrite and --out-dir) a run
// whose out_dir already holds another run's checkpoint.ckpt or
// metrics.jsonl, which its saves would replace: a new run, or a resume
// moved to another --out-dir. A resume into its own checkpoint's folder
// continues that run and passes, as does anything with options.overwrite.
// The one rank that writes files calls it (the others may start later).
void refuse_replacing_a_run(const RunSetup& setup, const TrainOptions& options);

// Whether a resumed run writes into its checkpoint's own folder (its
// metrics are appended to); anything else starts the folder's files anew.
bool resumes_in_place(const RunSetup& setup, const TrainOptions& options);

struct RunData {
  TokenFile train, valid;
};

// Opens the token files. A new run records their identities in setup.train;
// a resumed one refuses files whose identity differs from the recorded one.
RunData open_run_data(RunSetup& setup);

// The model of a run started from `stored` (the checkpoint's), after the
// settings the user gave (`given`: ModelConfig JSON keys). Refuses, naming
// only the changed settings, any change on resume, and on init-from any
// change of the weights' shape (n_layer, n_head, d_model, seq_len, vocab_size).
ModelConfig apply_model_settings(const ModelConfig& stored, const nlohmann::json& given,
                                 const std::string& checkpoint, bool resuming);

}  // namespace lsgpt
