// Seed inputs for the fuzz targets, made by the real writers so they stay
// valid when a format changes. A target run with LSGPT_FUZZ_WRITE_SEEDS=DIR
// writes its seeds into DIR and exits (scripts/fuzz.sh does this first).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "io/checkpoint.h"
#include "io/hf_gpt2.h"
#include "io/safetensors.h"
#include "model/params.h"

namespace lsgpt::fuzz {

using Seed = std::pair<std::string, std::vector<uint8_t>>;

inline ModelConfig seed_config() {
  ModelConfig c;
  c.n_layer = 1, c.n_head = 2, c.d_model = 4, c.seq_len = 4, c.vocab_size = 8;
  c.n_local = {1};
  c.window = 2;
  c.normalize_and_validate();
  return c;
}

inline std::vector<float> seed_values(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = float(int(i % 17) - 8) / 8.0f;
  return v;
}

inline std::vector<Seed> checkpoint_seeds() {
  Checkpoint ck;
  ck.model = seed_config();
  ck.step = 5;
  ck.train = {{"lr", 0.001}};
  ck.state = {{"rng", {1, 2}}};
  ck.params = seed_values(make_param_layout(ck.model).total);
  std::vector<Seed> seeds{{"params_only.ckpt", serialize_checkpoint(ck)}};
  ck.adam_m = ck.params, ck.adam_v = ck.params;
  std::vector<uint8_t> full = serialize_checkpoint(ck);
  seeds.push_back({"with_optimizer.ckpt", full});
  seeds.push_back({"truncated.ckpt", std::vector<uint8_t>(full.begin(), full.begin() + full.size() / 2)});
  std::vector<uint8_t> flipped = full;
  flipped[flipped.size() / 2] ^= 4;
  seeds.push_back({"flipped.ckpt", flipped});
  return seeds;
}

inline std::vector<Seed> safetensors_seeds() {
  const ModelConfig cfg = seed_config();
  const std::vector<float> params = seed_values(make_param_layout(cfg).total);
  std::vector<Seed> seeds{
      {"gpt2_export.safetensors", safetensors::serialize(hf_gpt2_tensors(cfg, params), {{"format", "pt"}})}};
  const std::vector<float> a = seed_values(6);
  seeds.push_back({"small.safetensors", safetensors::serialize({{"a", {2, 3}, a, {}}, {"b", {}, {a.data(), 1}, {}}}, {})});
  const std::string mixed =
      R"({"__metadata__":{"format":"pt"},"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[4,8]},"i":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})";
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(uint8_t(uint64_t(mixed.size()) >> (8 * i)));
  bytes.insert(bytes.end(), mixed.begin(), mixed.end());
  for (int i = 0; i < 16; ++i) bytes.push_back(uint8_t(0x3c + i));
  seeds.push_back({"mixed_dtypes.safetensors", bytes});
  seeds.push_back({"empty.safetensors", {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'}});
  return seeds;
}

// Writes the seeds and exits when LSGPT_FUZZ_WRITE_SEEDS is set.
inline void maybe_write_seeds(const std::vector<Seed>& seeds) {
  const char* dir = std::getenv("LSGPT_FUZZ_WRITE_SEEDS");
  if (!dir) return;
  for (const auto& [name, bytes] : seeds) {
    std::ofstream out(std::string(dir) + "/" + name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write seed %s/%s\n", dir, name.c_str());
      std::exit(1);
    }
  }
  std::fprintf(stderr, "wrote %zu seeds to %s\n", seeds.size(), dir);
  std::exit(0);
}

}  // namespace lsgpt::fuzz
