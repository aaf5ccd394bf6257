// Capturing and replaying CUDA graphs (graph.h).
#include "runtime/cuda/graph.h"

#include "runtime/cuda/cuda_check.h"

namespace qc::cuda {

Status CapturedGraph::BeginCapture(cudaStream_t stream) {
  QC_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  return Status::Ok();
}

StatusOr<std::unique_ptr<CapturedGraph>> CapturedGraph::EndCapture(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  if (end != cudaSuccess || graph == nullptr) {
    (void)cudaGetLastError();  // the capture's errors are not the next call's
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    return FailedPrecondition(std::string("the CUDA graph capture was invalidated (") + cudaGetErrorString(end) + ")");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaError(inst, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  return std::unique_ptr<CapturedGraph>(new CapturedGraph(exec));
}

CapturedGraph::~CapturedGraph() { (void)cudaGraphExecDestroy(exec_); }

Status CapturedGraph::Launch(cudaStream_t stream) const {
  QC_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec_, stream));
  return Status::Ok();
}

}  // namespace qc::cuda
