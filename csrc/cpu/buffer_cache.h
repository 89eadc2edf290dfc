// buffer_cache.h -- the CPU's buffers of a pass (gates, cells, outputs, gate gradients): the large ones
// mapped in 2 MiB transparent huge pages where the kernel offers them, and freed mappings (huge-page or
// ordinary) kept for reuse by the next call.
//
// Why: glibc maps every allocation of 32 MiB or more afresh and unmaps it when freed, so such a buffer
// costs a page fault per 4 KiB and freshly zeroed pages on every call, and a call makes several
// (profile notes 15 and 17). Freed mappings are kept, up to kMaxCachedBytes, and serve the next requests
// of their size, as PyTorch's CUDA allocator caches; empty_huge_page_cache() (lstm_ext.empty_cache())
// unmaps them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace lstm_ext {
namespace cpu {

// Requests from this size up get a mapping of their own, advised for huge pages (Linux).
constexpr size_t kMinHugePageBytes = size_t{32} << 20;
// Requests from this size up get a mapping of their own too, of 4 KiB pages, cached alike: glibc hands
// the pages of such blocks back to the kernel when they are freed (its heap is trimmed, or they were
// mapped), so every call faulted in its packed weights (1 MiB each at H=256) and projection buffer again:
// a fifth of a T=16, B=8, H=256 inference forward went to page faults.
constexpr size_t kMinCachedBytes = size_t{256} << 10;
// Freed mappings kept for reuse, at most: a T=512, B=128, H=256 training step's large buffers (0.7 GiB).
constexpr size_t kMaxCachedBytes = size_t{1} << 30;

// An uninitialised tensor like at::empty(sizes, options). On Linux a CPU tensor of at least
// kMinCachedBytes is backed by a mapping of its own (from kMinHugePageBytes up aligned to and advised for
// huge pages), cached when the tensor's storage is freed; anything else comes from ATen's allocator.
at::Tensor empty_huge_page_backed(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes of freed mappings kept for reuse, and unmapping them all.
size_t cached_huge_page_bytes();
void empty_huge_page_cache();

}  // namespace cpu
}  // namespace lstm_ext
