// lsgpt checkpoints: everything needed to resume a run, in one file.
//
//   "LSGPTCKP"            8 bytes magic
//   version               uint32 little-endian (kCheckpointVersion)
//   header_bytes          uint32 little-endian
//   header                JSON {"format", "model", "train", "state", "step",
//                         "tensors": [{"name", "offset" (bytes from the start of the
//                         data), "count" (floats)}, ...]}, padded with spaces so
//                         the float data starts 64-byte aligned; tensors are
//                         "params" and, when there is optimizer state, "adam_m", "adam_v"
//   data                  the tensors of the table, raw little-endian fp32, back to back
//   crc32                 uint32 little-endian, zlib CRC-32 of every byte before it
//
// The train and state sections are opaque JSON that the trainer owns (its
// settings, with the data files' absolute paths and identities; RNG state and
// data position), so the format never changes when the
// trainer gains a setting. Loading validates sizes before trusting any offset
// and the CRC before trusting any value, and says which of these failed.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"

namespace lsgpt {

inline constexpr uint32_t kCheckpointVersion = 1;

struct Checkpoint {
  ModelConfig model;
  nlohmann::json train = nlohmann::json::object();  // training settings, opaque to io
  nlohmann::json state = nlohmann::json::object();  // run state: rng, data position, ... opaque to io
  int64_t step = 0;                                 // optimizer steps done
  std::vector<float> params;                        // flat fp32 in make_param_layout(model) order
  std::vector<float> adam_m, adam_v;  // both empty when there is no optimizer state
};

void save_checkpoint(const std::string& path, const Checkpoint& ck);  // atomic
Checkpoint load_checkpoint(const std::string& path);                  // fully validated
// Like load, but also refuses when ck.model differs from `expected` (says which fields differ).
Checkpoint load_checkpoint_expecting(const std::string& path, const ModelConfig& expected);

// The parser behind load_checkpoint, on bytes already in memory; `origin`
// names the source in error messages. Used by the fuzzer and the tests.
Checkpoint parse_checkpoint(std::span<const uint8_t> bytes, const std::string& origin);
// The exact bytes save_checkpoint writes (tests and fuzz seeds).
std::vector<uint8_t> serialize_checkpoint(const Checkpoint& ck);

// "n_local (checkpoint [3,3] vs expected [2,2]); window (100 vs 64)", or ""
// when equal. `a` is the checkpoint's, `b` the expected one.
std::string describe_config_difference(const ModelConfig& a, const ModelConfig& b);

}  // namespace lsgpt
