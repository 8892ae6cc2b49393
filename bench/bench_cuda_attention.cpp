// Times lsgpt's CUDA attention, forward and forward+backward, on random bf16
// inputs: CUDA events around each call, a few warm-up calls, then the median
// of many. Prints one JSON object per configuration (for bench/attention_vs_torch.py).
//
// Usage: bench_cuda_attention [B=.. T=.. heads=.. head_dim=.. local=.. window=..
//                              span=off|cross reps=.. forward_kernels=1
//                              backward_kernels=1]
// With no B/T/heads given it runs the standard grid: width 2048, 16384 tokens
// per batch, head_dim 64 and 128, T 1024/4096/16384, for MHSA, 11 of 12 heads
// local at w=100, and half the heads local at w=256.
// forward_kernels=1 times the forward alone on the sm_80 kernel
// (LSGPT_ATTENTION_SM80=1) and on the default one (the wgmma kernel on a
// compute capability 9.0 GPU, the variant attention_sm90_choice.h picks for
// the shape), one JSON line per configuration; where the default is a
// wgmma kernel, every variant forced as well
// (LSGPT_ATTENTION_SM90_FORWARD = base, ws, ws_persistent, ws_dynamic:
// "fwd_<variant>_ms" and "_tflops", "<variant>_speedup" over sm_80).
// backward_kernels=1 does the same for the backward alone (delta kernel
// included), from one forward's outputs, with the backward's variants
// (LSGPT_ATTENTION_SM90_BACKWARD = base, wg2, ws, one_pass, one_pass_wg2,
// ws_band, ws_one_pass, and ws_band with LSGPT_ATTENTION_SM90_BAND_RUN 2, 8, 16, ws
// with LSGPT_ATTENTION_SM90_WS_SCHEDULE=static (striding instead of the
// default's counter) and ws with LSGPT_ATTENTION_SM90_HEAD_GROUP=0 (one
// group instead of the default's head groups): "bwd_<variant>_ms", ...).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/env_switch.h"
#include "core/error.h"
#include "ops/backend.h"

#ifdef LSGPT_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "ops/cuda/cuda_backend.h"
#endif

namespace {

using namespace lsgpt;

struct Config {
  int B, T, heads, head_dim, local, window;
  bool span;
  const char* label;
};

// Visible (query, key) pairs of one batch row: the work a mask-aware kernel must do.
double visible_pairs(const Config& c) {
  const double T = c.T;
  const double causal = T * (T + 1) / 2;
  const double w = std::min<double>(c.window, T);
  const double band = w * (w + 1) / 2 + (T - w) * w;
  return c.local * band + (c.heads - c.local) * causal;
}

#ifdef LSGPT_HAVE_CUDA
constexpr const char* kSm80Env = "LSGPT_ATTENTION_SM80";

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(what, ": ", cudaGetErrorString(e));
}

template <typename Fn>
double median_ms(Backend& be, int reps, Fn fn) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  auto stream = static_cast<cudaStream_t>(cuda_stream_of(be));
  for (int i = 0; i < 3; ++i) fn();
  be.sync();
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    fn();
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
#endif

#ifdef LSGPT_HAVE_CUDA
// One more run of a variant with a second switch set, reported as `label`.
struct ExtraRun {
  const char* label;
  const char* variant;
  const char* env;
  const char* value;
};

// The variants of a Hopper kernel: the switch that picks one and its values,
// and runs of some of them with another switch set.
struct Variants {
  const char* env;
  std::vector<const char*> names;
  std::vector<ExtraRun> extras = {};
};

// One direction's time on the sm_80 kernel and on the default kernel
// (`prefix` "fwd" or "bwd"; `flops` its canonical matrix-product count;
// `uses_sm90` says which kernel the default is) and, when that is the wgmma
// kernel, on each of `variants`.
template <typename Fn>
void compare_kernels(Backend& be, const Config& c, const AttentionSpec& spec, int reps,
                     const char* prefix, double flops,
                     bool (*uses_sm90)(Backend&, const AttentionSpec&), const Variants& variants,
                     Fn run) {
  double sm80 = 0, dflt = 0;
  bool sm90 = false;
  {
    ScopedEnv force(kSm80Env, "1");
    sm80 = median_ms(be, reps, run);
  }
  ScopedEnv force(kSm80Env, "0");
  {
    ScopedEnv unset(variants.env, nullptr);
    sm90 = uses_sm90(be, spec);
    dflt = median_ms(be, reps, run);
  }
  std::string per_variant;
  auto report = [&](const char* name, double ms) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  ", \"%s_%s_ms\": %.4f, \"%s_%s_tflops\": %.1f, \"%s_speedup\": %.3f", prefix,
                  name, ms, prefix, name, flops / ms * 1e-9, name, sm80 / ms);
    per_variant += buf;
  };
  if (sm90) {
    for (const char* name : variants.names) {
      ScopedEnv choose(variants.env, name);
      report(name, median_ms(be, reps, run));
    }
    for (const ExtraRun& extra : variants.extras) {
      ScopedEnv choose(variants.env, extra.variant);
      ScopedEnv set(extra.env, extra.value);
      report(extra.label, median_ms(be, reps, run));
    }
  }
  std::printf(
      "{\"label\": \"%s\", \"B\": %d, \"T\": %d, \"heads\": %d, \"head_dim\": %d, \"local\": %d, "
      "\"window\": %d, \"span\": %s, \"default_kernel\": \"%s\", \"%s_sm80_ms\": %.4f, "
      "\"%s_default_ms\": %.4f, \"%s_sm80_tflops\": %.1f, \"%s_default_tflops\": %.1f, "
      "\"speedup\": %.3f%s}\n",
      c.label, c.B, c.T, c.heads, c.head_dim, c.local, c.window, c.span ? "true" : "false",
      sm90 ? "sm90_wgmma" : "sm80", prefix, sm80, prefix, dflt, prefix, flops / sm80 * 1e-9,
      prefix, flops / dflt * 1e-9, sm80 / dflt, per_variant.c_str());
  std::fflush(stdout);
}
#endif

enum class Mode { fwd_bwd, forward_kernels, backward_kernels };

void run_config(Backend& be, const Config& c, int reps, Mode mode) {
#ifdef LSGPT_HAVE_CUDA
  AttentionSpec spec;
  spec.B = c.B, spec.T = c.T, spec.n_head = c.heads, spec.head_dim = c.head_dim;
  spec.n_local = c.local, spec.window = c.window;
  if (c.span) {
    spec.span.q = {true, SpanBasis::cross, 1.5, 1.0};
    spec.span.k = {true, SpanBasis::cross, 1.5, 1.0};
  }
  const size_t BT = size_t(c.B) * c.T, C = spec.C();
  std::mt19937_64 rng(c.T * 131 + c.head_dim);
  std::uniform_real_distribution<float> dist(-2, 2);
  std::vector<float> host(BT * 3 * C);
  for (auto& x : host) x = dist(rng);
  DeviceBuffer qkv(be, BT * 3 * C * 2), dout(be, BT * C * 2), out(be, BT * C * 2),
      dqkv(be, BT * 3 * C * 2), lse(be, size_t(c.B) * c.heads * c.T * 4), max_logit(be, c.heads * 4),
      kbar(be, spec.span.needs_kbar() ? BT * C * 2 : 0);
  be.upload_f32(qkv.get(), DType::bf16, host.data(), BT * 3 * C);
  host.resize(BT * C);
  for (auto& x : host) x = dist(rng) * 0.5f;
  be.upload_f32(dout.get(), DType::bf16, host.data(), BT * C);
  auto forward = [&] {
    be.attention_forward(out.get(), lse.get(), max_logit.get(), kbar.get(), qkv.get(), spec);
  };
  auto backward = [&] {
    be.attention_backward(dqkv.get(), nullptr, dout.get(), qkv.get(), out.get(), lse.get(),
                          kbar.get(), spec);
  };
  // 2 products forward (S, P V), 5 backward (S, dP, dV, dK, dQ), each 2 flops a multiply-add.
  const double flops_fwd = 4.0 * c.B * visible_pairs(c) * c.head_dim;
  if (mode == Mode::forward_kernels) {
    const Variants variants{"LSGPT_ATTENTION_SM90_FORWARD",
                            {"base", "ws", "ws_persistent", "ws_dynamic"}};
    compare_kernels(be, c, spec, reps, "fwd", flops_fwd, cuda_attention_forward_uses_sm90,
                    variants, forward);
    return;
  }
  if (mode == Mode::backward_kernels) {
    forward();  // out, lse and kbar for the backward
    // The two-pass kernels also in the old batch-major block order, so the
    // default (global heads first) keeps being checked against it.
    constexpr const char* kOrder = "LSGPT_ATTENTION_SM90_BACKWARD_ORDER";
    // ws_band also with runs of 2, 8 and 16 key blocks (its default picks
    // by shape; at D 128 or with qbar it runs ws).
    constexpr const char* kBandRun = "LSGPT_ATTENTION_SM90_BAND_RUN";
    // ws with its items handed out by striding (the default takes them from
    // a counter), and in one group of heads.
    constexpr const char* kSchedule = "LSGPT_ATTENTION_SM90_WS_SCHEDULE";
    constexpr const char* kHeadGroup = "LSGPT_ATTENTION_SM90_HEAD_GROUP";
    const Variants variants{"LSGPT_ATTENTION_SM90_BACKWARD",
                            {"base", "wg2", "ws", "one_pass", "one_pass_wg2", "ws_band",
                             "ws_one_pass", "ws_one_pass_ordered"},
                            {{"base_batch_major", "base", kOrder, "batch_major"},
                             {"wg2_batch_major", "wg2", kOrder, "batch_major"},
                             {"ws_band_run2", "ws_band", kBandRun, "2"},
                             {"ws_band_run8", "ws_band", kBandRun, "8"},
                             {"ws_band_run16", "ws_band", kBandRun, "16"},
                             {"ws_static", "ws", kSchedule, "static"},
                             {"ws_one_group", "ws", kHeadGroup, "0"}}};
    compare_kernels(be, c, spec, reps, "bwd", 2.5 * flops_fwd, cuda_attention_backward_uses_sm90,
                    variants, backward);
    return;
  }
  const double fwd = median_ms(be, reps, forward);
  const double fwd_bwd = median_ms(be, reps, [&] { forward(); backward(); });
  std::printf(
      "{\"label\": \"%s\", \"B\": %d, \"T\": %d, \"heads\": %d, \"head_dim\": %d, \"local\": %d, "
      "\"window\": %d, \"span\": %s, \"fwd_ms\": %.4f, \"fwd_bwd_ms\": %.4f, "
      "\"fwd_tflops\": %.1f, \"fwd_bwd_tflops\": %.1f}\n",
      c.label, c.B, c.T, c.heads, c.head_dim, c.local, c.window, c.span ? "true" : "false", fwd,
      fwd_bwd, flops_fwd / fwd * 1e-9, 3.5 * flops_fwd / fwd_bwd * 1e-9);
  std::fflush(stdout);
#else
  (void)be, (void)c, (void)reps, (void)mode;
#endif
}

std::vector<Config> standard_grid() {
  std::vector<Config> grid;
  for (int D : {64, 128})
    for (int T : {1024, 4096, 16384}) {
      const int B = 16384 / T, H = 2048 / D;
      const int n_global = std::max(1, (H + 6) / 12);  // 1 of 12, rounded
      grid.push_back({B, T, H, D, 0, 1, false, "mhsa"});
      grid.push_back({B, T, H, D, H - n_global, 100, false, "ls_11of12_w100"});
      grid.push_back({B, T, H, D, H / 2, 256, false, "ls_half_w256"});
    }
  return grid;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "bench_cuda_attention: expected key=value, got '%s'\n", argv[i]);
      return 2;
    }
    args[a.substr(0, eq)] = a.substr(eq + 1);
  }
  auto get = [&](const char* k, int dflt) {
    return args.count(k) ? std::atoi(args[k].c_str()) : dflt;
  };
  try {
    std::unique_ptr<Backend> be = make_backend("cuda");
    const int reps = get("reps", 20);
    if (get("forward_kernels", 0) != 0 && get("backward_kernels", 0) != 0) {
      std::fprintf(stderr,
                   "bench_cuda_attention: forward_kernels=1 and backward_kernels=1 exclude "
                   "each other\n");
      return 2;
    }
    const Mode mode = get("forward_kernels", 0) != 0    ? Mode::forward_kernels
                      : get("backward_kernels", 0) != 0 ? Mode::backward_kernels
                                                        : Mode::fwd_bwd;
    if (args.count("T")) {
      Config c{get("B", 1), get("T", 1024), get("heads", 16), get("head_dim", 128),
               get("local", 0), get("window", 100), args.count("span") && args["span"] == "cross",
               "custom"};
      run_config(*be, c, reps, mode);
    } else {
      for (const Config& c : standard_grid()) run_config(*be, c, reps, mode);
      for (int D : {64, 128}) {  // span overhead: compare with ls_11of12_w100 at T 4096
        const int H = 2048 / D, n_global = std::max(1, (H + 6) / 12);
        Config c{4, 4096, H, D, H - n_global, 100, true, "ls_11of12_w100_span_cross"};
        run_config(*be, c, reps, mode);
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_cuda_attention: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
