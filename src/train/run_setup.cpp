#include "train/run_setup.h"

#include <cstdio>
#include <filesystem>
#include <utility>

#include "core/error.h"

namespace lsgpt {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Absolute and free of "..", "." and symlinks, so the path a checkpoint
// records does not depend on the directory the run was started from.
std::string absolute_path(const std::string& p) {
  if (p.empty()) return p;
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(p), ec);
  if (ec) abs = fs::absolute(p).lexically_normal();
  return abs.string();
}

const char* flag_of(const std::string& key) {
  if (key == "n_layer") return "--n-layer";
  if (key == "n_head") return "--n-head";
  if (key == "d_model") return "--d-model";
  if (key == "seq_len") return "--seq-len";
  if (key == "n_local") return "--n-local";
  if (key == "window") return "--window";
  if (key == "span") return "--span/--span-preset";
  if (key == "vocab_size") return "--vocab-size";
  if (key == "eot_token") return "--eot-token";
  if (key == "qk_norm") return "--qk-norm";
  if (key == "z_loss") return "--z-loss";
  return "--config";
}

bool is_shape(const std::string& key) {
  return key == "n_layer" || key == "n_head" || key == "d_model" || key == "seq_len" ||
         key == "vocab_size" || key == "qk_norm";  // QK-norm adds gain tensors
}

std::string value_text(const json& j) { return j.is_null() ? "off" : j.dump(); }

// "window (--window): checkpoint 4, given 5; n_local (--n-local): ..."; only
// the keys of `given` are looked at, so nothing the user left alone is named.
std::string describe_changes(const json& stored, const json& wanted, const json& given,
                             bool shape_only) {
  std::string out;
  for (auto& [key, _] : given.items()) {
    if (key == "comment" || shape_only != is_shape(key)) continue;
    const json a = stored.contains(key) ? stored[key] : json();
    const json b = wanted.contains(key) ? wanted[key] : json();
    if (a == b) continue;
    if (!out.empty()) out += "; ";
    out += key + " (" + flag_of(key) + "): checkpoint " + value_text(a) + ", given " +
           value_text(b);
  }
  return out;
}

TrainConfig merge_resumed_settings(const json& stored, const json& given,
                                   const std::string& path) {
  const TrainConfig saved = TrainConfig::from_json(stored);
  const json schedule = saved.schedule_json();
  json merged = saved.to_json();
  for (auto& [key, value] : given.items()) {
    if (schedule.contains(key) && schedule[key] != value)
      fail("cannot change '", key, "' when resuming: the checkpoint '", path, "' has ",
           schedule[key].dump(), " (resume continues the same run; start a new run with "
           "--init-from to change it)");
    merged[key] = value;
  }
  // Stopping early is a property of one invocation, not of the run.
  merged["stop_at"] = given.value("stop_at", 0L);
  merged["max_time"] = given.value("max_time", 0.0);
  // The run continues where its checkpoint is, not where a relative path
  // recorded at the start would point from today's working directory.
  if (!given.contains("out_dir"))
    merged["out_dir"] = fs::path(absolute_path(path)).parent_path().string();
  return TrainConfig::from_json(merged);
}

// A data path of a resumed run: the one given now, else the recorded one.
// Checkpoints from before data identities hold the path as typed, which may be
// relative to a directory nobody remembers; those need the file named again.
std::string resumed_data_path(const std::string& recorded, const DataIdentity& id,
                              const json& given, const char* key, const char* flag,
                              const std::string& checkpoint) {
  if (given.contains(key)) return absolute_path(given[key].get<std::string>());
  if (!id.known() && fs::path(recorded).is_relative())
    fail("checkpoint '", checkpoint, "' records its ", flag, " data only as the relative path '",
         recorded, "' without the file's identity (it was written by an older lsgpt); pass ",
         flag, " FILE to name that file");
  return absolute_path(recorded);
}

TokenFile open_data(const std::string& path, int vocab, const RunSetup& s, const char* flag) {
  try {
    TokenFile file(path, 0);
    // The model's vocabulary, not GPT-2's, decides which token files fit.
    if (file.vocab_size() != vocab)
      fail("token file ", path, " was made with a vocabulary of ", file.vocab_size(),
           " tokens; this model uses ", vocab,
           s.resuming ? "" : " (a new model takes its vocabulary size from --vocab-size)");
    return file;
  } catch (const Error& e) {
    if (!s.resuming) throw;
    fail(e.what(), " (the ", flag, " data of checkpoint '", s.checkpoint, "'; if it moved, pass ",
         flag, " with its new path)");
  }
}

void bind_identity(const TokenFile& file, const DataIdentity& found, DataIdentity& recorded,
                   const RunSetup& s, const char* flag) {
  if (!s.resuming || !recorded.known()) {
    if (s.resuming)
      std::fprintf(stderr,
                   "warning: checkpoint '%s' records no identity of its %s data (written by an "
                   "older lsgpt); cannot check that %s is the data it was trained on\n",
                   s.checkpoint.c_str(), flag, file.path().c_str());
    recorded = found;
    return;
  }
  if (found != recorded)
    fail(flag, " data '", file.path(), "' is not the data checkpoint '", s.checkpoint,
         "' was trained on: the file holds ", found.to_string(), ", the checkpoint recorded ",
         recorded.to_string(), ". Resume needs the same data (pass ", flag,
         " FILE if it moved); to train on other data, start a new run with --init-from");
}

}  // namespace

ModelConfig apply_model_settings(const ModelConfig& stored, const json& given,
                                 const std::string& checkpoint, bool resuming) {
  const json base = stored.to_json();
  const std::string shape = describe_changes(base, given, given, true);
  if (!shape.empty()) {
    if (resuming)
      fail("cannot change the model when resuming from checkpoint '", checkpoint, "': ", shape,
           " (resume continues the same run with the same model)");
    fail("cannot change the shape of the weights of checkpoint '", checkpoint, "' with --init-from: ",
         shape, " (the shape comes from the checkpoint; which heads are local, the window and "
         "the span setting can change)");
  }
  json merged = base;
  for (auto& [key, value] : given.items()) {
    if (key == "comment" || is_shape(key)) continue;
    if (value.is_null()) merged.erase(key);
    else merged[key] = value;
  }
  ModelConfig c;
  try {
    c = ModelConfig::from_json(merged);
  } catch (const Error& e) {
    fail("the model settings given for checkpoint '", checkpoint, "' do not fit it: ", e.what());
  }
  if (resuming) {
    const std::string changed = describe_changes(base, c.to_json(), given, false);
    if (!changed.empty())
      fail("cannot change the model when resuming from checkpoint '", checkpoint, "': ", changed,
           " (resume continues the same run; start a new run with --init-from to change it)");
  }
  return c;
}

// A new run from --init-from X writes its checkpoint over X when --out-dir
// is X's folder (the default for a resume, not for a new run): the
// weights it started from would be gone after the first save.
void refuse_writing_over_the_start(const RunSetup& s, const TrainOptions& o) {
  if (o.init_from.empty()) return;
  std::error_code ec;
  if (fs::equivalent(o.init_from, fs::path(s.train.out_dir) / "checkpoint.ckpt", ec))
    fail("--init-from '", o.init_from, "' is the checkpoint this run would write (--out-dir ",
         s.train.out_dir, "); give another --out-dir");
}

bool resumes_in_place(const RunSetup& s, const TrainOptions& o) {
  std::error_code ec;
  return s.resuming && fs::equivalent(o.resume, fs::path(s.train.out_dir) / "checkpoint.ckpt", ec);
}

void refuse_replacing_a_run(const RunSetup& s, const TrainOptions& o) {
  if (o.overwrite && resumes_in_place(s, o))
    fail("--overwrite would replace the run that --resume continues in --out-dir '",
         s.train.out_dir, "'; give one of them, or another --out-dir");
  if (o.overwrite || resumes_in_place(s, o)) return;
  const fs::path dir(s.train.out_dir);
  const fs::path checkpoint = dir / "checkpoint.ckpt", metrics = dir / "metrics.jsonl";
  std::error_code ec;
  if (fs::exists(checkpoint, ec))
    fail("--out-dir '", dir.string(), "' already holds a run (checkpoint.ckpt); continue it "
         "with --resume ", checkpoint.string(), ", replace it with --overwrite, or give "
         "another --out-dir");
  if (fs::exists(metrics, ec))
    fail("--out-dir '", dir.string(), "' already holds a run (metrics.jsonl, no checkpoint to "
         "resume); replace it with --overwrite, or give another --out-dir");
}

RunSetup setup_run(const TrainOptions& o) {
  RunSetup s;
  if (!o.resume.empty() && !o.init_from.empty())
    fail("give either --resume or --init-from, not both");
  s.resuming = !o.resume.empty();
  s.checkpoint = s.resuming ? o.resume : o.init_from;
  if (s.checkpoint.empty()) {
    s.model = o.model;
    s.model.normalize_and_validate();
  } else {
    s.start = load_checkpoint(s.checkpoint);
    if (s.resuming && s.start.adam_m.empty())
      fail("checkpoint '", s.checkpoint, "' has no optimizer state, so there is no run to "
           "resume (an imported model?); start a new run from its weights with --init-from");
    s.model = apply_model_settings(s.start.model, o.explicit_model, s.checkpoint, s.resuming);
  }
  if (s.resuming) {
    s.train = merge_resumed_settings(s.start.train, o.explicit_train, o.resume);
    s.train.fault = o.train.fault;
    s.train.train_data = resumed_data_path(s.train.train_data, s.train.train_id,
                                           o.explicit_train, "train_data", "--train", o.resume);
    s.train.valid_data = resumed_data_path(s.train.valid_data, s.train.valid_id,
                                           o.explicit_train, "valid_data", "--valid", o.resume);
  } else {
    s.train = o.train;
    s.train.train_data = absolute_path(s.train.train_data);
    s.train.valid_data = absolute_path(s.train.valid_data);
    s.train.train_id = s.train.valid_id = DataIdentity{};
  }
  s.train.out_dir = absolute_path(s.train.out_dir);
  s.train.validate();
  refuse_writing_over_the_start(s, o);
  if (s.resuming && s.train.stop_at > 0 && s.train.stop_at <= s.start.step)
    fail("--stop-at ", s.train.stop_at, " is not past step ", s.start.step, " of checkpoint '",
         o.resume, "': nothing would be trained (lsgpt eval --checkpoint evaluates it)");
  return s;
}

RunData open_run_data(RunSetup& s) {
  TrainConfig& tc = s.train;
  RunData d{open_data(tc.train_data, s.model.vocab_size, s, "--train"),
            open_data(tc.valid_data, s.model.vocab_size, s, "--valid")};
  const DataIdentity train{d.train.size(), d.train.fnv1a64()};
  // Quick runs often validate on the training file: read it once.
  const DataIdentity valid =
      tc.valid_data == tc.train_data ? train : DataIdentity{d.valid.size(), d.valid.fnv1a64()};
  bind_identity(d.train, train, tc.train_id, s, "--train");
  bind_identity(d.valid, valid, tc.valid_id, s, "--valid");
  return d;
}

}  // namespace lsgpt
