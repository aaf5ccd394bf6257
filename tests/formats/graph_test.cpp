// Graph helpers: which values a node or graph reads, subgraphs included.
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>

#include "formats/graph.h"

namespace qc {
namespace {

Node MakeNode(const std::string& op, std::vector<std::string> inputs, std::vector<std::string> outputs) {
  Node n;
  n.op_type = op;
  n.name = op + "_" + outputs.front();
  n.inputs = std::move(inputs);
  n.outputs = std::move(outputs);
  return n;
}

// A body graph whose one node reads `read` and whose output is `out` (a value of the enclosing
// graph when nothing in the body produces it).
std::shared_ptr<Graph> Body(const std::string& read, const std::string& out) {
  auto g = std::make_shared<Graph>();
  g->nodes.push_back(MakeNode("Neg", {read}, {"body_" + read}));
  g->outputs.push_back(ValueInfo{out});
  return g;
}

TEST(CollectReadValues, InputsAndSubgraphReadsAndPassThroughOutputs) {
  Node node = MakeNode("If", {"cond", "", "extra"}, {"y"});
  Attribute then_branch;
  then_branch.type = Attribute::Type::kGraph;
  then_branch.g = Body("outer_a", "outer_b");  // outer_b passed through untouched
  node.attributes["then_branch"] = then_branch;
  Attribute bodies;
  bodies.type = Attribute::Type::kGraphs;
  bodies.graphs = {Body("outer_c", "body_outer_c"), nullptr};
  node.attributes["bodies"] = bodies;

  std::set<std::string> read;
  CollectReadValues(node, &read);
  EXPECT_EQ(read, (std::set<std::string>{"cond", "extra", "outer_a", "outer_b", "outer_c", "body_outer_c"}));
  EXPECT_EQ(read.count(""), 0u) << "an omitted optional input is no value";
}

TEST(CollectReadValues, GraphLeavesItsOwnOutputsOut) {
  Graph g;
  g.nodes.push_back(MakeNode("Add", {"x", "w"}, {"s"}));
  g.nodes.push_back(MakeNode("Relu", {"s"}, {"y"}));
  g.outputs.push_back(ValueInfo{"y"});
  std::set<std::string> read = {"already"};
  CollectReadValues(g, &read);
  EXPECT_EQ(read, (std::set<std::string>{"already", "x", "w", "s"}));
}

}  // namespace
}  // namespace qc
