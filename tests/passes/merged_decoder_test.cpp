// Merged decoders: the inlined prefill view computes what the If computes on a prefill, and its
// linear layers are the else branch's; named negative cases.
#include "passes/merged_decoder.h"

#include <gtest/gtest.h>

#include "formats/model_builder.h"
#include "formats/npy.h"
#include "formats/onnx_reader.h"
#include "runtime/executor.h"
#include "runtime/input_binding.h"

namespace qc {
namespace {

const std::string kKvDir = std::string(QC_SOURCE_DIR) + "/tests/data/kv/";

TEST(MergedDecoderTest, PrefillViewComputesTheElseBranch) {
  for (const std::string arch : {"llama", "gpt2"}) {
    SCOPED_TRACE(arch);
    StatusOr<Model> merged = ReadOnnxModel(kKvDir + arch + "/model_merged.onnx");
    ASSERT_TRUE(merged.ok()) << merged.status().message();
    EXPECT_TRUE(HasLinearLayersInBranches(*merged));
    EXPECT_TRUE(FindLinearLayers(merged->graph).empty());
    StatusOr<Model> view = InlinePrefillBranches(*merged);
    ASSERT_TRUE(view.ok()) << view.status().message();
    EXPECT_FALSE(HasLinearLayersInBranches(*view));
    EXPECT_EQ(LinearLayersByOutput(*view).size(), arch == "llama" ? 15u : 9u);
    EXPECT_EQ(view->graph.inputs.size(), merged->graph.inputs.size());

    const Tensor ids = ReadNpy(kKvDir + arch + "/input_ids.npy").value();
    // Execution fusions apply to graphs without subgraphs only (the view, not the merged model),
    // and some change rounding: compare the graphs as written.
    SessionOptions as_written;
    as_written.fuse_ops = false;
    auto a = Session::Create(*merged, as_written).value();
    auto b = Session::Create(*view, as_written).value();
    std::vector<Tensor> want = a->Run(BindInputs(*a, ids).value()).value();
    std::vector<Tensor> got = b->Run(BindInputs(*b, ids).value()).value();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(got[i].BitEqual(want[i])) << i;
  }
}

TEST(MergedDecoderTest, Negative_ComputedConditionIsRejected) {
  StatusOr<Model> merged = ReadOnnxModel(kKvDir + "llama/model_merged.onnx");
  ASSERT_TRUE(merged.ok());
  // Condition the If on a Not of the input instead of the input itself.
  Node& if_node = merged->graph.nodes.back();
  ASSERT_EQ(if_node.op_type, "If");
  Node negate;
  negate.op_type = "Not";
  negate.name = "negate";
  negate.inputs = {if_node.inputs[0]};
  negate.outputs = {"negated_flag"};
  if_node.inputs[0] = "negated_flag";
  merged->graph.nodes.insert(merged->graph.nodes.end() - 1, negate);
  StatusOr<Model> view = InlinePrefillBranches(*merged);
  ASSERT_FALSE(view.ok());
  EXPECT_NE(view.status().message().find("condition"), std::string::npos) << view.status().message();
}

TEST(MergedDecoderTest, PlainModelsAreNotMerged) {
  StatusOr<Model> plain = ReadOnnxModel(kKvDir + "llama/model.onnx");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(HasLinearLayersInBranches(*plain));
}

}  // namespace
}  // namespace qc
