// libFuzzer target: the checkpoint parser on arbitrary bytes (it parses from
// memory, as load_checkpoint does from a memory map).
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "fuzz_seeds.h"
#include "io/checkpoint.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lsgpt::fuzz::maybe_write_seeds(lsgpt::fuzz::checkpoint_seeds());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lsgpt::Checkpoint ck = lsgpt::parse_checkpoint({data, size}, "fuzz");
    volatile size_t sink = ck.params.size() + ck.adam_m.size();
    (void)sink;
  } catch (const lsgpt::Error&) {
  }
  return 0;
}
