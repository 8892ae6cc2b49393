// Runs the CUDA attention forward and backward on fixed random inputs for the
// settings tools/attention_reference.py checks (MHSA, LS, span cross and span
// self at T in {1, 7, 100, 1000, 4096}, head dims 64 and 128) and writes every
// input and output as float32 .npy files plus a manifest.json describing the
// cases, so PyTorch can recompute them in float64 with explicit masks.
// Usage: attention_dump OUTDIR
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "infer/npy.h"
#include "ops/backend.h"

namespace {

using namespace lsgpt;

std::vector<float> bf16_random(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = from_bf16(to_bf16(dist(rng)));
  return v;
}

struct Setting {
  const char* name;
  bool local;
  SpanLayer span;
};

nlohmann::json span_json(const SpanTarget& t) {
  return {{"enabled", t.enabled},
          {"basis", t.basis == SpanBasis::cross ? "cross" : "self"},
          {"alpha_par", t.alpha_par},
          {"alpha_perp", t.alpha_perp}};
}

struct DeviceTensor {
  DeviceBuffer mem;
  DType type;
  size_t n;
};

DeviceTensor device_tensor(Backend& be, DType type, size_t n, const std::vector<float>* init) {
  DeviceTensor t{DeviceBuffer(be, std::max<size_t>(n, 1) * dtype_size(type)), type, n};
  std::vector<float> nan(init ? 0 : n, std::nanf(""));
  if (n) be.upload_f32(t.mem.get(), type, init ? init->data() : nan.data(), n);
  return t;
}

void save(Backend& be, const DeviceTensor& t, const std::string& path,
          const std::vector<int64_t>& shape) {
  std::vector<float> host(t.n);
  if (t.n) be.download_f32(host.data(), t.mem.get(), t.type, t.n);
  write_npy_f32(path, host, shape);
}

int run(const std::string& dir) {
  std::unique_ptr<Backend> be = make_backend("cuda");
  std::filesystem::create_directories(dir);
  SpanLayer cross, self;
  cross.q = {true, SpanBasis::cross, 1.5, 0.7};
  cross.k = {true, SpanBasis::cross, 0.5, 1.3};
  cross.v = {true, SpanBasis::self, 1.7, 0.9};
  self.q = {true, SpanBasis::self, 2.0, 0.8};
  self.k = {true, SpanBasis::self, 0.6, 1.1};
  self.v = {true, SpanBasis::self, 1.3, 1.0};
  const std::vector<Setting> settings = {
      {"mhsa", false, {}}, {"ls", true, {}}, {"span_cross", true, cross}, {"span_self", true, self}};
  nlohmann::json manifest = nlohmann::json::array();
  int index = 0;
  for (const Setting& s : settings)
    for (int T : {1, 7, 100, 1000, 4096})
      for (int D : {64, 128}) {
        AttentionSpec spec;
        spec.T = T, spec.head_dim = D, spec.n_head = D == 64 ? 4 : 2;
        spec.B = T >= 4096 ? 1 : 2;
        spec.n_local = s.local ? spec.n_head - 1 : 0;
        spec.window = T >= 1000 ? 100 : 5;
        spec.span = s.span;
        const size_t BT = size_t(spec.B) * T, C = spec.C(), H = spec.n_head;
        const bool kbar = spec.span.needs_kbar();
        const auto qkv_host = bf16_random(BT * 3 * C, 1000 + index, -2, 2);
        const auto dout_host = bf16_random(BT * C, 2000 + index, -1, 1);
        DeviceTensor qkv = device_tensor(*be, DType::bf16, BT * 3 * C, &qkv_host);
        DeviceTensor dout = device_tensor(*be, DType::bf16, BT * C, &dout_host);
        DeviceTensor out = device_tensor(*be, DType::bf16, BT * C, nullptr);
        DeviceTensor lse = device_tensor(*be, DType::f32, spec.B * H * T, nullptr);
        DeviceTensor max_logit = device_tensor(*be, DType::f32, H, nullptr);
        DeviceTensor kbar_t = device_tensor(*be, DType::bf16, kbar ? BT * C : 0, nullptr);
        DeviceTensor dqkv = device_tensor(*be, DType::bf16, BT * 3 * C, nullptr);
        void* kb = kbar ? kbar_t.mem.get() : nullptr;
        be->attention_forward(out.mem.get(), lse.mem.get(), max_logit.mem.get(), kb,
                              qkv.mem.get(), spec);
        be->attention_backward(dqkv.mem.get(), nullptr, dout.mem.get(), qkv.mem.get(),
                               out.mem.get(), lse.mem.get(), kb, spec);
        be->sync();
        const std::string name = std::string(s.name) + "_T" + std::to_string(T) + "_D" +
                                 std::to_string(D);
        const std::string base = dir + "/" + name;
        const int64_t B = spec.B, TT = T, CC = int64_t(C), HH = int64_t(H);
        save(*be, qkv, base + "_qkv.npy", {B, TT, 3 * CC});
        save(*be, dout, base + "_dout.npy", {B, TT, CC});
        save(*be, out, base + "_out.npy", {B, TT, CC});
        save(*be, lse, base + "_lse.npy", {B, HH, TT});
        save(*be, max_logit, base + "_max_logit.npy", {HH});
        if (kbar) save(*be, kbar_t, base + "_kbar.npy", {B, TT, CC});
        save(*be, dqkv, base + "_dqkv.npy", {B, TT, 3 * CC});
        manifest.push_back({{"name", name},
                            {"B", spec.B},
                            {"T", T},
                            {"n_head", spec.n_head},
                            {"head_dim", D},
                            {"n_local", spec.n_local},
                            {"window", spec.window},
                            {"kbar", kbar},
                            {"span",
                             {{"q", span_json(spec.span.q)},
                              {"k", span_json(spec.span.k)},
                              {"v", span_json(spec.span.v)}}}});
        ++index;
      }
  std::ofstream(dir + "/manifest.json") << manifest.dump(1) << "\n";
  std::printf("wrote %d cases to %s\n", index, dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: attention_dump OUTDIR\n");
    return 2;
  }
  try {
    return run(argv[1]);
  } catch (const lsgpt::Error& e) {
    std::fprintf(stderr, "attention_dump: error: %s\n", e.what());
    return 1;
  }
}
