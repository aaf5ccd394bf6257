// sm_90 asynchronous copies into shared memory for the MatMulNBits GEMV kernels: mbarriers, the
// copy engine's bulk copies (cp.async.bulk) and 4-byte cp.async, plus programmatic dependent launch
// and thread block clusters.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

namespace qc::cuda {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void MbarInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SmemAddr(bar)), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the copy engine (the async proxy).
__device__ __forceinline__ void FenceMbarInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n\tfence.proxy.async.shared::cta;" ::: "memory");
}
__device__ __forceinline__ void MbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SmemAddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(SmemAddr(bar)) : "memory");
}
// Waits for the barrier's phase `parity`; the 10 ms suspend-time hint lets the warp sleep until the
// copy lands instead of re-polling (no instruction issue while it waits).
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n\t.reg .pred p;\n"
      "WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1, 10000000;\n\t"
      "@!p bra WAIT;\n}" ::"r"(SmemAddr(bar)),
      "r"(parity)
      : "memory");
}
// One bulk copy global -> shared (16-byte aligned, a multiple of 16 bytes), completing on `bar`.
__device__ __forceinline__ void BulkCopy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   SmemAddr(dst)),
               "l"(src), "r"(bytes), "r"(SmemAddr(bar))
               : "memory");
}
__device__ __forceinline__ void CpAsync4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(SmemAddr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void CpAsyncWaitAll() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// One arrival on `bar` once every cp.async this thread issued before has landed (counted in the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void CpAsyncMbarArrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(SmemAddr(bar)) : "memory");
}

// Programmatic dependent launch (sm_90): a kernel launched with programmatic stream serialisation
// starts while the previous one runs and waits here before reading what that one wrote.
__device__ __forceinline__ void WaitForPrologue() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void AllowDependents() { asm volatile("griddepcontrol.launch_dependents;"); }

// Launches `kernel` on `stream`, with programmatic stream serialisation when `programmatic` (it may
// then start while the stream's previous kernel runs; it must call WaitForPrologue before reading
// that kernel's output), in clusters of `cluster` blocks along x when above 1 (grid.x a multiple).
template <typename... Params, typename... Args>
cudaError_t LaunchProgrammaticClusters(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
                                       cudaStream_t stream, bool programmatic, unsigned cluster, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = dynamic_smem;
  config.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (programmatic) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  config.attrs = attr;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}
template <typename... Params, typename... Args>
cudaError_t LaunchProgrammatic(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
                               cudaStream_t stream, bool programmatic, Args&&... args) {
  return LaunchProgrammaticClusters(kernel, grid, block, dynamic_smem, stream, programmatic, 1u,
                                    std::forward<Args>(args)...);
}

// Distributed shared memory (thread block clusters): this block's rank in its cluster, and a store
// to the same offset of another block's shared memory.
__device__ __forceinline__ int ClusterRank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return static_cast<int>(r);
}
__device__ __forceinline__ uint32_t PeerSmemAddr(const void* local, int rank) {
  uint32_t a;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"(SmemAddr(local)), "r"(rank));
  return a;
}
__device__ __forceinline__ void StorePeer(uint32_t addr, uint4 v) {
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void StorePeer(uint32_t addr, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}
// The split form of a cluster barrier with no memory ordering: every thread of every block
// arrives, and after the wait every block of the cluster is known to have started (the condition
// for touching another block's shared memory).
__device__ __forceinline__ void ClusterArrive() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void ClusterWait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
// Every thread of every block of the cluster; the stores before it are seen by all after it.
__device__ __forceinline__ void ClusterSync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

}  // namespace qc::cuda
