// huge_page_allocator.h -- CPU memory for the large buffers of a pass (gates, cells, outputs, gate
// gradients) in 2 MiB transparent huge pages, where the kernel offers them.
//
// Why: glibc maps every allocation of 32 MiB or more afresh and unmaps it when freed, so such a buffer
// costs a page fault per 4 KiB page on every call, and a call makes several. Measured in one process
// (2 threads) at T=512, B=128, H=64 (a 64 MiB gates buffer and its gradient): a training step 18-25%
// faster in huge pages; T=512, B=32, H=256: 5-10%. Smaller buffers, which glibc may reuse without new
// faults, showed no difference beyond this machine's noise (16 MiB ones: -11% to +14% over five runs).
//
// Freed mappings are kept, up to kMaxCachedBytes, and serve the next requests of their size (as glibc's
// heap keeps smaller blocks, and as PyTorch's CUDA allocator caches): the next call's buffers are then
// already faulted in. A fresh mapping costs more than its faults: the kernel zeroes every page (a tenth
// of a T=512, B=128, H=256 training step in clear_page), and on a virtual machine that has handed freed
// memory back to its host, the host faults it in again (that step measured 1.3 s with its buffers
// reused, up to 2.2 s when another computation had freed memory in between). empty_huge_page_cache()
// (lstm_ext.empty_cache()) unmaps them.
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
