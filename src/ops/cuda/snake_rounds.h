// How the blocks of a persistent kernel take their work items when the
// items come longest first: in rounds of one item a block, every other
// round in reverse block order (a "snake"). With plain striding (round *
// blocks + block) block 0 takes the longest item of every round and the
// last block the shortest, so the first blocks finish last: at MHSA D 128
// T 16k the ws_one_pass backward's multiprocessors were active 91% of the
// kernel's time that way and 98.8% with the snake (Nsight Compute, H200,
// 2026-12-02; docs/CUDA.md "Backward on Hopper: ws one pass").
//
// Compiles as host code (so the schedule is tested on the CPU) and as
// device code.
#pragma once

#include "core/host_device.h"

namespace lsgpt::cuda {

// Block `block`'s item in round `round` of a grid of `blocks` blocks; a
// block stops at the first round whose item is n_items or beyond. Each
// round hands out items [round * blocks, (round + 1) * blocks) once each,
// and a block's items strictly increase, so for n_items >= blocks every
// item is taken exactly once. The largest value a block computes is below
// n_items + 2 blocks - 1 (its caller keeps that within int).
LSGPT_HOST_DEVICE constexpr int snake_item(int round, int blocks, int block) {
  return round * blocks + ((round & 1) != 0 ? blocks - 1 - block : block);
}

}  // namespace lsgpt::cuda
