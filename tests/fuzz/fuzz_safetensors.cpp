// libFuzzer target: the safetensors reader, and the GPT-2 import that maps
// what it read, on arbitrary bytes. Any input must end in a result or an
// lsgpt::Error, never a crash, an out-of-bounds read or a runaway allocation.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_seeds.h"
#include "io/hf_gpt2.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lsgpt::fuzz::maybe_write_seeds(lsgpt::fuzz::safetensors_seeds());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace st = lsgpt::safetensors;
  try {
    const st::File file = st::parse({data, size}, "fuzz");
    double sum = 0;
    for (const st::TensorView& t : file.tensors) {
      try {
        for (float x : st::to_float(t, "fuzz")) sum += x;
      } catch (const lsgpt::Error&) {
      }
    }
    lsgpt::HfImportOptions options;
    if (size % 3 == 0) options.n_head = 1;
    const lsgpt::Checkpoint ck = lsgpt::import_hf_gpt2(file, nullptr, options, "fuzz");
    sum += ck.params.empty() ? 0 : ck.params[0];
    volatile double sink = sum;
    (void)sink;
  } catch (const lsgpt::Error&) {
  }
  return 0;
}
