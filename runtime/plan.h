// The compiled form of a graph that Session runs: slots, constants and topologically ordered
// steps with the values each step frees. Internal to runtime/ (the executor and its CUDA side).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/cpu/kernel.h"
#include "runtime/executor.h"

namespace qc {

using OpsetMap = std::map<std::string, int64_t>;

/// Per-op-type timings named by their keys, slowest first (Session::Profile on either device).
std::vector<OpProfile> SortedProfile(const std::map<std::string, OpProfile>& by_op);

/// A compiled graph: slot-indexed values and the steps that compute them.
class Plan {
 public:
  struct Step {
    const Node* node = nullptr;
    KernelFn fn = nullptr;  // nullptr for If (handled by the executor)
    std::vector<int> in;    // -1 for omitted optional inputs
    std::vector<int> out;   // -1 for omitted outputs
    std::vector<int> free_after;
    // Constants read for the last time by this step: the run's frame drops its reference (a
    // replacement set through Execution::SetValue is freed) and mapped weights release their pages.
    std::vector<int> release_after;
    int64_t opset = 0;
    std::vector<std::unique_ptr<Plan>> branches;  // If: then, else
  };

  /// Compiles `graph`. `outer` lists names visible from enclosing graphs (for subgraphs).
  static StatusOr<std::unique_ptr<Plan>> Compile(const Graph& graph, const OpsetMap& opsets, const SessionOptions& options,
                                                 const std::set<std::string>& outer);

  /// Runs the plan. `frame` must be sized slots() and hold the feeds; `parent` resolves outer names.
  Status Execute(std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
                 const NodeObserver* observer) const {
    QC_RETURN_IF_ERROR(BindOuter(frame, parent));
    return ExecuteSteps(frame, parent, observer, 0, num_steps());
  }
  /// Copies outer-scope values into the frame.
  Status BindOuter(std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent) const;
  /// Runs steps [begin, end).
  Status ExecuteSteps(std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
                      const NodeObserver* observer, int begin, int end) const;
  int num_steps() const { return static_cast<int>(steps_.size()); }
  const std::vector<Step>& steps() const { return steps_; }
  int StepOfNode(const std::string& name) const {
    for (size_t i = 0; i < steps_.size(); ++i)
      if (steps_[i].node->name == name) return static_cast<int>(i);
    return -1;
  }
  int StepProducing(const std::string& value) const {
    for (size_t i = 0; i < steps_.size(); ++i)
      for (const std::string& out : steps_[i].node->outputs)
        if (out == value) return static_cast<int>(i);
    return -1;
  }

  mutable std::map<std::string, OpProfile> profile_;
  bool profiling_ = false;

  int slots() const { return static_cast<int>(names_.size()); }
  /// The value name a slot holds.
  const std::string& SlotName(int slot) const { return names_[slot]; }
  int SlotOf(const std::string& name) const {
    auto it = slot_of_.find(name);
    return it == slot_of_.end() ? -1 : it->second;
  }
  const std::vector<Tensor>& constants() const { return constants_; }
  const std::vector<int>& output_slots() const { return output_slots_; }
  const std::vector<std::pair<std::string, int>>& outer_slots() const { return outer_slots_; }

 private:
  Status RunStep(const Step& step, std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
                 const NodeObserver* observer) const;
  Status RunIf(const Step& step, std::vector<Tensor>& frame, const std::function<const Tensor*(const std::string&)>& parent,
               std::vector<Tensor>* outputs) const;

  std::vector<std::string> names_;
  std::unordered_map<std::string, int> slot_of_;
  std::vector<Tensor> constants_;  // slot-indexed; undefined where not constant
  std::vector<Step> steps_;
  std::vector<int> output_slots_;
  std::vector<std::pair<std::string, int>> outer_slots_;  // names captured from the enclosing graph
};

}  // namespace qc
