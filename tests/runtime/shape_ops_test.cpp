// Tests of the shape and data-movement kernels: hand-checked cases, named negative cases, fast vs reference.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "formats/graph.h"
#include "formats/tensor.h"
#include "runtime/cpu/kernel.h"

namespace qc {
namespace {

// ---- A small harness: build a node, run one of its kernels directly. ----

struct Call {
  std::string op;
  std::vector<std::optional<Tensor>> inputs;
  std::map<std::string, Attribute> attrs;
  int outputs = 1;
  int64_t opset = 18;

  Call& Int(const std::string& k, int64_t v) {
    attrs[k].type = Attribute::Type::kInt;
    attrs[k].i = v;
    return *this;
  }
  Call& Ints(const std::string& k, std::vector<int64_t> v) {
    attrs[k].type = Attribute::Type::kInts;
    attrs[k].ints = std::move(v);
    return *this;
  }
  Call& Float(const std::string& k, float v) {
    attrs[k].type = Attribute::Type::kFloat;
    attrs[k].f = v;
    return *this;
  }
  Call& Floats(const std::string& k, std::vector<float> v) {
    attrs[k].type = Attribute::Type::kFloats;
    attrs[k].floats = std::move(v);
    return *this;
  }
  Call& Str(const std::string& k, std::string v) {
    attrs[k].type = Attribute::Type::kString;
    attrs[k].s = std::move(v);
    return *this;
  }
  Call& TensorAttr(const std::string& k, Tensor v) {
    attrs[k].type = Attribute::Type::kTensor;
    attrs[k].t = std::move(v);
    return *this;
  }
};

Call Op(std::string op, std::vector<std::optional<Tensor>> inputs, int outputs = 1) {
  Call c;
  c.op = std::move(op);
  c.inputs = std::move(inputs);
  c.outputs = outputs;
  return c;
}

StatusOr<std::vector<Tensor>> RunWith(const Call& c, bool fast) {
  const OpKernels* k = FindOpKernels("", c.op);
  if (!k) return NotFound("op " + c.op + " is not registered");
  Node node;
  node.name = "test_node";
  node.op_type = c.op;
  node.attributes = c.attrs;
  for (size_t i = 0; i < c.inputs.size(); ++i) node.inputs.push_back(c.inputs[i] ? "in" + std::to_string(i) : "");
  for (int i = 0; i < c.outputs; ++i) node.outputs.push_back("out" + std::to_string(i));
  KernelContext ctx{node, {}, std::vector<Tensor>(c.outputs), c.opset, {}};
  for (const auto& t : c.inputs) ctx.inputs.push_back(t ? &*t : nullptr);
  KernelFn fn = fast && k->fast ? k->fast : k->reference;
  QC_RETURN_IF_ERROR(fn(ctx));
  return ctx.outputs;
}

// Runs the reference and (if any) the fast kernel, checks they agree bit for bit, returns output 0.
Tensor RunBoth(const Call& c, int output = 0) {
  StatusOr<std::vector<Tensor>> ref = RunWith(c, false);
  EXPECT_TRUE(ref.ok()) << ref.status().message();
  if (!ref.ok()) return Tensor();
  StatusOr<std::vector<Tensor>> fast = RunWith(c, true);
  EXPECT_TRUE(fast.ok()) << fast.status().message();
  if (fast.ok())
    for (size_t i = 0; i < ref->size(); ++i) EXPECT_TRUE((*ref)[i].BitEqual((*fast)[i])) << c.op << " output " << i;
  return (*ref)[output];
}

// Expects both kernels to fail with a message naming the node; returns the reference's code.
StatusCode ExpectError(const Call& c, std::string* message = nullptr) {
  StatusOr<std::vector<Tensor>> ref = RunWith(c, false);
  StatusOr<std::vector<Tensor>> fast = RunWith(c, true);
  EXPECT_FALSE(ref.ok()) << c.op << " unexpectedly succeeded";
  EXPECT_FALSE(fast.ok()) << c.op << " (fast) unexpectedly succeeded";
  if (ref.ok()) return StatusCode::kOk;
  EXPECT_NE(ref.status().message().find("test_node"), std::string::npos)
      << "message does not name the node: " << ref.status().message();
  if (message) *message = ref.status().message();
  return ref.status().code();
}

Tensor F(std::vector<float> v, Shape s) { return Tensor::FromVector<float>(v, std::move(s)); }
Tensor I64(std::vector<int64_t> v, Shape s) { return Tensor::FromVector<int64_t>(v, std::move(s)); }
Tensor I64(std::vector<int64_t> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::FromVector<int64_t>(v, {n});
}
Tensor I32(std::vector<int32_t> v, Shape s) { return Tensor::FromVector<int32_t>(v, std::move(s)); }
Tensor Iota(Shape s) {
  Tensor t(DType::kFloat32, std::move(s));
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = static_cast<float>(i);
  return t;
}

template <typename T>
void ExpectValues(const Tensor& t, const Shape& shape, const std::vector<T>& values) {
  ASSERT_EQ(t.dtype(), DTypeOf<T>::value);
  ASSERT_EQ(t.shape(), shape);
  ASSERT_EQ(t.numel(), static_cast<int64_t>(values.size()));
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(t.data<T>()[i], values[i]) << "element " << i;
}

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();

// ---- Constants and shape queries ----

TEST(ShapeOps, Constant_AllValueForms) {
  ExpectValues<float>(RunBoth(Op("Constant", {}).TensorAttr("value", F({1, 2}, {2}))), {2}, {1, 2});
  ExpectValues<float>(RunBoth(Op("Constant", {}).Float("value_float", 2.5f)), {}, {2.5f});
  ExpectValues<float>(RunBoth(Op("Constant", {}).Floats("value_floats", {1, 2, 3})), {3}, {1, 2, 3});
  ExpectValues<int64_t>(RunBoth(Op("Constant", {}).Int("value_int", -4)), {}, {-4});
  ExpectValues<int64_t>(RunBoth(Op("Constant", {}).Ints("value_ints", {5, 6})), {2}, {5, 6});
}

TEST(ShapeOps, Negative_ConstantStringAndSparse) {
  EXPECT_EQ(ExpectError(Op("Constant", {}).Str("value_string", "x")), StatusCode::kUnimplemented);
  Call sparse = Op("Constant", {});
  sparse.attrs["sparse_value"].type = Attribute::Type::kUndefined;
  EXPECT_EQ(ExpectError(sparse), StatusCode::kUnimplemented);
  ExpectError(Op("Constant", {}));  // no value at all
  ExpectError(Op("Constant", {}).Int("value_int", 1).Float("value_float", 1));
}

TEST(ShapeOps, ConstantOfShape) {
  ExpectValues<float>(RunBoth(Op("ConstantOfShape", {I64({2, 2})})), {2, 2}, {0, 0, 0, 0});
  ExpectValues<int64_t>(RunBoth(Op("ConstantOfShape", {I64({3})}).TensorAttr("value", I64({7}, {1}))), {3}, {7, 7, 7});
  ExpectValues<float>(RunBoth(Op("ConstantOfShape", {I64({})}).TensorAttr("value", F({3}, {1}))), {}, {3});
}

TEST(ShapeOps, Negative_ConstantOfShapeHugeOrNegative) {
  ExpectError(Op("ConstantOfShape", {I64({1 << 20, 1 << 20})}));
  ExpectError(Op("ConstantOfShape", {I64({kI64Max, kI64Max})}));
  ExpectError(Op("ConstantOfShape", {I64({2, -1})}));
}

TEST(ShapeOps, IdentityAndDropoutAlias) {
  Tensor x = Iota({2, 3});
  Tensor y = RunBoth(Op("Identity", {x}));
  EXPECT_EQ(y.raw(), x.raw());
  StatusOr<std::vector<Tensor>> d = RunWith(Op("Dropout", {x, F({0.3f}, {}), Tensor::Scalar<bool>(false)}, 2), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((*d)[0].raw(), x.raw());
  ExpectValues<bool>((*d)[1], {2, 3}, std::vector<bool>(6, true));
  // Training mode with ratio 0 drops nothing, so it is deterministic.
  d = RunWith(Op("Dropout", {x, F({0.0f}, {}), Tensor::Scalar<bool>(true)}, 2), false);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_TRUE((*d)[0].BitEqual(x));
}

TEST(ShapeOps, Negative_DropoutTrainingMode) {
  Tensor x = Iota({4});
  EXPECT_EQ(ExpectError(Op("Dropout", {x, F({0.5f}, {}), Tensor::Scalar<bool>(true)})), StatusCode::kUnimplemented);
}

TEST(ShapeOps, ShapeStartEndAndSize) {
  Tensor x(DType::kFloat32, {2, 3, 4, 5});
  ExpectValues<int64_t>(RunBoth(Op("Shape", {x})), {4}, {2, 3, 4, 5});
  ExpectValues<int64_t>(RunBoth(Op("Shape", {x}).Int("start", 1).Int("end", -1)), {2}, {3, 4});
  ExpectValues<int64_t>(RunBoth(Op("Shape", {x}).Int("start", -10).Int("end", 100)), {4}, {2, 3, 4, 5});
  ExpectValues<int64_t>(RunBoth(Op("Shape", {x}).Int("start", 3).Int("end", 1)), {0}, {});
  ExpectValues<int64_t>(RunBoth(Op("Size", {x})), {}, {120});
}

// ---- Views ----

TEST(ShapeOps, ReshapeCopyInferAllowZero) {
  Tensor x = Iota({2, 3, 4});
  Tensor y = RunBoth(Op("Reshape", {x, I64({0, -1})}));
  EXPECT_EQ(y.shape(), (Shape{2, 12}));
  EXPECT_EQ(y.raw(), x.raw());  // zero copy
  EXPECT_EQ(RunBoth(Op("Reshape", {x, I64({-1, 0, 2})})).shape(), (Shape{4, 3, 2}));
  Tensor empty(DType::kFloat32, {0, 3});
  EXPECT_EQ(RunBoth(Op("Reshape", {empty, I64({3, 0})}).Int("allowzero", 1)).shape(), (Shape{3, 0}));
  EXPECT_EQ(RunBoth(Op("Reshape", {empty, I64({0, 3})})).shape(), (Shape{0, 3}));
}

TEST(ShapeOps, Negative_ReshapeInvalid) {
  Tensor x = Iota({2, 3, 4});
  ExpectError(Op("Reshape", {x, I64({-1, -1})}));
  ExpectError(Op("Reshape", {x, I64({5, -1})}));
  ExpectError(Op("Reshape", {x, I64({2, 3, 5})}));
  ExpectError(Op("Reshape", {x, I64({0, -1})}).Int("allowzero", 1));
  ExpectError(Op("Reshape", {x, I64({1, 1, 1, 0, 24})}));  // copies a dim the input lacks
  ExpectError(Op("Reshape", {x, I64({-2, 12})}));
  ExpectError(Op("Reshape", {x, I64({kI64Max, kI64Max, -1})}));
}

TEST(ShapeOps, Flatten) {
  Tensor x = Iota({2, 3, 4});
  EXPECT_EQ(RunBoth(Op("Flatten", {x})).shape(), (Shape{2, 12}));
  EXPECT_EQ(RunBoth(Op("Flatten", {x}).Int("axis", 0)).shape(), (Shape{1, 24}));
  EXPECT_EQ(RunBoth(Op("Flatten", {x}).Int("axis", 3)).shape(), (Shape{24, 1}));
  EXPECT_EQ(RunBoth(Op("Flatten", {x}).Int("axis", -1)).shape(), (Shape{6, 4}));
  ExpectError(Op("Flatten", {x}).Int("axis", 4));
}

TEST(ShapeOps, SqueezeUnsqueezeBothOpsetForms) {
  Tensor x(DType::kFloat32, {1, 3, 1, 2});
  EXPECT_EQ(RunBoth(Op("Squeeze", {x})).shape(), (Shape{3, 2}));
  EXPECT_EQ(RunBoth(Op("Squeeze", {x, I64({-2})})).shape(), (Shape{1, 3, 2}));
  EXPECT_EQ(RunBoth(Op("Squeeze", {x, I64({})})).shape(), (Shape{3, 2}));
  Call old = Op("Squeeze", {x}).Ints("axes", {0});
  old.opset = 11;
  EXPECT_EQ(RunBoth(old).shape(), (Shape{3, 1, 2}));
  Tensor y(DType::kFloat32, {3, 4});
  EXPECT_EQ(RunBoth(Op("Unsqueeze", {y, I64({0, -1})})).shape(), (Shape{1, 3, 4, 1}));
  EXPECT_EQ(RunBoth(Op("Unsqueeze", {y, I64({3, 1})})).shape(), (Shape{3, 1, 4, 1}));
  Call old_u = Op("Unsqueeze", {y}).Ints("axes", {1});
  old_u.opset = 11;
  EXPECT_EQ(RunBoth(old_u).shape(), (Shape{3, 1, 4}));
}

TEST(ShapeOps, Negative_SqueezeUnsqueeze) {
  Tensor x(DType::kFloat32, {1, 3});
  ExpectError(Op("Squeeze", {x, I64({1})}));  // size 3
  ExpectError(Op("Squeeze", {x, I64({2})}));
  ExpectError(Op("Squeeze", {x, I64({0, -2})}));  // duplicate
  ExpectError(Op("Unsqueeze", {x, I64({0, 0})}));
  ExpectError(Op("Unsqueeze", {x, I64({4})}));
  ExpectError(Op("Unsqueeze", {x}));  // no axes at all
}

// ---- Transpose / Concat / Split / Slice ----

TEST(ShapeOps, Transpose) {
  Tensor x = Iota({2, 3});
  ExpectValues<float>(RunBoth(Op("Transpose", {x})), {3, 2}, {0, 3, 1, 4, 2, 5});
  Tensor y = Iota({2, 2, 2});
  ExpectValues<float>(RunBoth(Op("Transpose", {y}).Ints("perm", {1, 0, 2})), {2, 2, 2}, {0, 1, 4, 5, 2, 3, 6, 7});
}

TEST(ShapeOps, Negative_TransposeBadPerm) {
  Tensor x = Iota({2, 3});
  ExpectError(Op("Transpose", {x}).Ints("perm", {0, 0}));
  ExpectError(Op("Transpose", {x}).Ints("perm", {0}));
  ExpectError(Op("Transpose", {x}).Ints("perm", {0, 2}));
}

TEST(ShapeOps, Concat) {
  ExpectValues<float>(RunBoth(Op("Concat", {F({1, 2, 3, 4}, {2, 2}), F({5, 6}, {2, 1})}).Int("axis", -1)), {2, 3},
                      {1, 2, 5, 3, 4, 6});
  ExpectValues<int64_t>(RunBoth(Op("Concat", {I64({1}), I64({}), I64({2, 3})}).Int("axis", 0)), {3}, {1, 2, 3});
}

TEST(ShapeOps, Negative_ConcatMismatch) {
  ExpectError(Op("Concat", {F({1, 2}, {1, 2}), F({1, 2, 3}, {1, 3})}).Int("axis", 0));
  ExpectError(Op("Concat", {F({1}, {1}), I64({1})}).Int("axis", 0));
  ExpectError(Op("Concat", {F({1}, {1})}));  // axis missing
  ExpectError(Op("Concat", {F({1}, {1})}).Int("axis", 1));
}

TEST(ShapeOps, SplitForms) {
  Tensor x = Iota({2, 6});
  StatusOr<std::vector<Tensor>> r = RunWith(Op("Split", {x, I64({1, 2, 3})}, 3).Int("axis", 1), false);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ExpectValues<float>((*r)[0], {2, 1}, {0, 6});
  ExpectValues<float>((*r)[1], {2, 2}, {1, 2, 7, 8});
  ExpectValues<float>((*r)[2], {2, 3}, {3, 4, 5, 9, 10, 11});
  r = RunWith(Op("Split", {x, I64({})}, 2), false);  // an empty split list means equal parts
  ASSERT_TRUE(r.ok());
  ExpectValues<float>((*r)[1], {1, 6}, {6, 7, 8, 9, 10, 11});
  // Opset 18 num_outputs: chunks of ceil(7 / 3) = 3 -> [3, 3, 1].
  r = RunWith(Op("Split", {Iota({7})}, 3).Int("num_outputs", 3), false);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ExpectValues<float>((*r)[2], {1}, {6});
  EXPECT_EQ((*r)[0].shape(), (Shape{3}));
  Call old = Op("Split", {Iota({5})}, 2).Ints("split", {2, 3});
  old.opset = 11;
  r = RunWith(old, false);
  ASSERT_TRUE(r.ok());
  ExpectValues<float>((*r)[1], {3}, {2, 3, 4});
}

TEST(ShapeOps, Negative_SplitInvalid) {
  ExpectError(Op("Split", {Iota({6}), I64({1, 2})}, 2));  // sums to 3
  ExpectError(Op("Split", {Iota({6}), I64({1, 2, 3})}, 2));
  ExpectError(Op("Split", {Iota({6}), I64({-1, 7})}, 2));
  Call uneven = Op("Split", {Iota({5})}, 2);
  uneven.opset = 13;
  ExpectError(uneven);
  ExpectError(Op("Split", {Iota({6})}, 2).Int("num_outputs", 3));
  ExpectError(Op("Split", {Iota({2})}, 2).Int("axis", 1));
}

TEST(ShapeOps, SliceStepsAndClamping) {
  Tensor x = Iota({3, 4});
  ExpectValues<float>(RunBoth(Op("Slice", {x, I64({1, 0}), I64({2, 3})})), {1, 3}, {4, 5, 6});
  ExpectValues<float>(RunBoth(Op("Slice", {x, I64({-1}), I64({kI64Min}), I64({1}), I64({-2})})), {3, 2},
                      {3, 1, 7, 5, 11, 9});
  ExpectValues<float>(RunBoth(Op("Slice", {x, I64({1}), I64({kI64Max}), I64({0})})), {2, 4},
                      {4, 5, 6, 7, 8, 9, 10, 11});
  ExpectValues<float>(RunBoth(Op("Slice", {x, I64({10}), I64({20}), I64({1})})), {3, 0}, {});
  ExpectValues<float>(RunBoth(Op("Slice", {x, I64({-100}), I64({100}), I64({-1}), I64({3})})), {3, 2},
                      {0, 3, 4, 7, 8, 11});
  // Negative step from past the end clamps to the last element.
  ExpectValues<float>(RunBoth(Op("Slice", {Iota({5}), I64({100}), I64({-100}), I64({0}), I64({kI64Min})})), {1}, {4});
  Call old = Op("Slice", {x}).Ints("starts", {1}).Ints("ends", {3}).Ints("axes", {1});
  old.opset = 9;
  ExpectValues<float>(RunBoth(old), {3, 2}, {1, 2, 5, 6, 9, 10});
}

TEST(ShapeOps, Negative_SliceInvalid) {
  Tensor x = Iota({3, 4});
  ExpectError(Op("Slice", {x, I64({0}), I64({2}), I64({0}), I64({0})}));  // step 0
  ExpectError(Op("Slice", {x, I64({0, 0}), I64({2, 2}), I64({1, -1})}));   // axis twice
  ExpectError(Op("Slice", {x, I64({0}), I64({2, 3})}));
  ExpectError(Op("Slice", {x, I64({0}), I64({2}), I64({2})}));
  ExpectError(Op("Slice", {x, F({0}, {1}), I64({2})}));
}

// ---- Gather / Scatter ----

TEST(ShapeOps, Gather) {
  Tensor x = Iota({3, 2});
  ExpectValues<float>(RunBoth(Op("Gather", {x, I64({2, -3}, {2})})), {2, 2}, {4, 5, 0, 1});
  ExpectValues<float>(RunBoth(Op("Gather", {x, I32({1}, {})}).Int("axis", 1)), {3}, {1, 3, 5});
  ExpectValues<float>(RunBoth(Op("Gather", {x, I64({0, 2, 1, 0}, {2, 2})})), {2, 2, 2}, {0, 1, 4, 5, 2, 3, 0, 1});
}

TEST(ShapeOps, Negative_GatherIndexOutOfRange) {
  Tensor x = Iota({3, 2});
  std::string message;
  ExpectError(Op("Gather", {x, I64({3})}), &message);
  EXPECT_NE(message.find("index 3"), std::string::npos) << message;
  ExpectError(Op("Gather", {x, I64({-4})}));
  ExpectError(Op("Gather", {x, F({0}, {1})}));
  ExpectError(Op("Gather", {x, I64({0})}).Int("axis", 2));
}

TEST(ShapeOps, GatherNDBatchDims) {
  Tensor data = Iota({2, 2, 2});
  ExpectValues<float>(RunBoth(Op("GatherND", {data, I64({0, 1, 1, 0}, {2, 2})})), {2, 2}, {2, 3, 4, 5});
  ExpectValues<float>(RunBoth(Op("GatherND", {data, I64({1, 0}, {2, 1})}).Int("batch_dims", 1)), {2, 2},
                      {2, 3, 4, 5});
  ExpectValues<float>(RunBoth(Op("GatherND", {data, I64({-1, -1, -1}, {1, 3})})), {1}, {7});
}

TEST(ShapeOps, Negative_GatherNDInvalid) {
  Tensor data = Iota({2, 2});
  ExpectError(Op("GatherND", {data, I64({0, 2}, {1, 2})}));
  ExpectError(Op("GatherND", {data, I64({0, 0, 0}, {1, 3})}));
  ExpectError(Op("GatherND", {data, I64({0}, {1, 1})}).Int("batch_dims", 1));  // batch dim 2 vs 1
}

TEST(ShapeOps, GatherElements) {
  Tensor data = F({1, 2, 3, 4}, {2, 2});
  ExpectValues<float>(RunBoth(Op("GatherElements", {data, I64({0, 0, 1, 0}, {2, 2})}).Int("axis", 1)), {2, 2},
                      {1, 1, 4, 3});
  ExpectValues<float>(RunBoth(Op("GatherElements", {data, I64({-1, 0}, {1, 2})})), {1, 2}, {3, 2});
  ExpectError(Op("GatherElements", {data, I64({2, 0}, {1, 2})}));
  ExpectError(Op("GatherElements", {data, I64({0, 0, 0}, {1, 3})}));  // exceeds data on dim 1
}

TEST(ShapeOps, ScatterNDReductions) {
  Tensor data = F({1, 2, 3, 4}, {4});
  Tensor idx = I64({1, 3, 1}, {3, 1});
  Tensor upd = F({10, 20, 30}, {3});
  ExpectValues<float>(RunBoth(Op("ScatterND", {data, I64({1, 3}, {2, 1}), F({9, 8}, {2})})), {4}, {1, 9, 3, 8});
  ExpectValues<float>(RunBoth(Op("ScatterND", {data, idx, upd}).Str("reduction", "add")), {4}, {1, 42, 3, 24});
  ExpectValues<float>(RunBoth(Op("ScatterND", {data, idx, upd}).Str("reduction", "mul")), {4}, {1, 600, 3, 80});
  ExpectValues<float>(RunBoth(Op("ScatterND", {data, idx, upd}).Str("reduction", "max")), {4}, {1, 30, 3, 20});
  Tensor m = Iota({2, 2});
  ExpectValues<float>(RunBoth(Op("ScatterND", {m, I64({-1}, {1, 1}), F({7, 7}, {1, 2})})), {2, 2}, {0, 1, 7, 7});
}

TEST(ShapeOps, Negative_ScatterNDInvalid) {
  Tensor data = F({1, 2, 3, 4}, {4});
  ExpectError(Op("ScatterND", {data, I64({4}, {1, 1}), F({1}, {1})}));
  ExpectError(Op("ScatterND", {data, I64({1}, {1, 1}), F({1, 2}, {2})}));
  ExpectError(Op("ScatterND", {data, I64({1}, {1, 1}), I64({1})}));
  ExpectError(Op("ScatterND", {data, I64({1}, {1, 1}), F({1}, {1})}).Str("reduction", "avg"));
}

TEST(ShapeOps, ScatterElementsReductions) {
  Tensor data = F({1, 2, 3, 4, 5}, {1, 5});
  Tensor idx = I64({1, 3, 1}, {1, 3});
  Tensor upd = F({1.1f, 2.1f, 3.1f}, {1, 3});
  ExpectValues<float>(RunBoth(Op("ScatterElements", {data, idx, upd}).Int("axis", 1)), {1, 5}, {1, 3.1f, 3, 2.1f, 5});
  ExpectValues<float>(RunBoth(Op("ScatterElements", {data, idx, upd}).Int("axis", 1).Str("reduction", "add")), {1, 5},
                      {1, 2 + 1.1f + 3.1f, 3, 4 + 2.1f, 5});
  Tensor ints = I64({1, 2, 3}, {3});
  ExpectValues<int64_t>(RunBoth(Op("ScatterElements", {ints, I64({-1, 0}, {2}), I64({5, 6}, {2})}).Str("reduction", "mul")),
                        {3}, {6, 2, 15});
  ExpectError(Op("ScatterElements", {ints, I64({3}, {1}), I64({5}, {1})}));
  ExpectError(Op("ScatterElements", {ints, I64({0, 1}, {2}), I64({5}, {1})}));
}

// ---- Expand / Tile / Pad / Range ----

TEST(ShapeOps, Expand) {
  ExpectValues<float>(RunBoth(Op("Expand", {F({1, 2, 3}, {3, 1}), I64({2, 1, 2})})), {2, 3, 2},
                      {1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3});
  // A 1 in the target keeps the input's dim (bidirectional broadcast).
  ExpectValues<float>(RunBoth(Op("Expand", {F({1, 2}, {2}), I64({2, 1})})), {2, 2}, {1, 2, 1, 2});
  EXPECT_EQ(RunBoth(Op("Expand", {F({1}, {1}), I64({3, 0})})).shape(), (Shape{3, 0}));
}

TEST(ShapeOps, Negative_ExpandInvalid) {
  ExpectError(Op("Expand", {F({1, 2, 3}, {3}), I64({2})}));
  ExpectError(Op("Expand", {F({1}, {1}), I64({1 << 20, 1 << 20})}));
  ExpectError(Op("Expand", {F({1}, {1}), I64({-1})}));
}

TEST(ShapeOps, Tile) {
  ExpectValues<float>(RunBoth(Op("Tile", {F({1, 2, 3, 4}, {2, 2}), I64({1, 2})})), {2, 4}, {1, 2, 1, 2, 3, 4, 3, 4});
  EXPECT_EQ(RunBoth(Op("Tile", {F({1, 2}, {2}), I64({0})})).shape(), (Shape{0}));
  ExpectError(Op("Tile", {F({1, 2}, {2}), I64({-1})}));
  ExpectError(Op("Tile", {F({1, 2}, {2}), I64({kI64Max})}));
  ExpectError(Op("Tile", {F({1, 2}, {2}), I64({1, 1})}));
}

TEST(ShapeOps, PadModes) {
  Tensor x = F({1, 2, 3}, {3});
  ExpectValues<float>(RunBoth(Op("Pad", {x, I64({2, 1}), F({9}, {})})), {6}, {9, 9, 1, 2, 3, 9});
  ExpectValues<float>(RunBoth(Op("Pad", {x, I64({2, 2})}).Str("mode", "reflect")), {7}, {3, 2, 1, 2, 3, 2, 1});
  ExpectValues<float>(RunBoth(Op("Pad", {x, I64({2, 1})}).Str("mode", "edge")), {6}, {1, 1, 1, 2, 3, 3});
  ExpectValues<float>(RunBoth(Op("Pad", {x, I64({2, 4})}).Str("mode", "wrap")), {9}, {2, 3, 1, 2, 3, 1, 2, 3, 1});
  // Reflection further than the axis keeps bouncing (numpy.pad semantics).
  ExpectValues<float>(RunBoth(Op("Pad", {x, I64({0, 5})}).Str("mode", "reflect")), {8}, {1, 2, 3, 2, 1, 2, 3, 2});
  // Negative pads crop.
  ExpectValues<float>(RunBoth(Op("Pad", {x, I64({-1, 1})})), {3}, {2, 3, 0});
  // Opset 18 axes input: pad only the last axis.
  ExpectValues<float>(RunBoth(Op("Pad", {Iota({2, 2}), I64({1, 0}), std::nullopt, I64({-1})})), {2, 3}, {0, 0, 1, 0, 2, 3});
  Tensor ints = I32({5, 6}, {1, 2});
  ExpectValues<int32_t>(RunBoth(Op("Pad", {ints, I64({1, 0, 0, 1}), I32({-1}, {})})), {2, 3}, {-1, -1, -1, 5, 6, -1});
  Call old = Op("Pad", {x}).Ints("pads", {1, 0}).Float("value", 4);
  old.opset = 10;
  ExpectValues<float>(RunBoth(old), {4}, {4, 1, 2, 3});
}

TEST(ShapeOps, Negative_PadInvalid) {
  Tensor x = F({1, 2, 3}, {3});
  ExpectError(Op("Pad", {x, I64({1, 1})}).Str("mode", "mirror"));
  ExpectError(Op("Pad", {x, I64({1})}));
  ExpectError(Op("Pad", {x, I64({-2, -2})}));
  ExpectError(Op("Pad", {x, I64({1, 1}), I64({1}, {})}));  // constant dtype mismatch
  ExpectError(Op("Pad", {x, I64({0, int64_t{1} << 40})}));
  ExpectError(Op("Pad", {F({}, {0}), I64({1, 1})}).Str("mode", "edge"));
}

TEST(ShapeOps, RangeTypes) {
  ExpectValues<int32_t>(RunBoth(Op("Range", {I32({10}, {}), I32({6}, {}), I32({-3}, {})})), {2}, {10, 7});
  ExpectValues<float>(RunBoth(Op("Range", {F({1}, {}), F({5}, {}), F({2}, {})})), {2}, {1, 3});
  ExpectValues<int64_t>(RunBoth(Op("Range", {I64({5}, {}), I64({1}, {}), I64({1}, {})})), {0}, {});
  ExpectValues<int64_t>(RunBoth(Op("Range", {I64({kI64Max - 1}, {}), I64({kI64Max}, {}), I64({5}, {})})), {1},
                        {kI64Max - 1});
}

TEST(ShapeOps, Negative_RangeInvalid) {
  ExpectError(Op("Range", {I64({0}, {}), I64({5}, {}), I64({0}, {})}));
  ExpectError(Op("Range", {I64({kI64Min}, {}), I64({kI64Max}, {}), I64({1}, {})}));
  ExpectError(Op("Range", {F({0}, {}), F({1e30f}, {}), F({1e-30f}, {})}));
  ExpectError(Op("Range", {F({0}, {}), I64({5}, {}), I64({1}, {})}));
}

// ---- CumSum / Trilu / EyeLike ----

TEST(ShapeOps, CumSumVariants) {
  Tensor x = F({1, 2, 3, 4, 5}, {5});
  Tensor axis = I32({0}, {});
  ExpectValues<float>(RunBoth(Op("CumSum", {x, axis})), {5}, {1, 3, 6, 10, 15});
  ExpectValues<float>(RunBoth(Op("CumSum", {x, axis}).Int("exclusive", 1)), {5}, {0, 1, 3, 6, 10});
  ExpectValues<float>(RunBoth(Op("CumSum", {x, axis}).Int("reverse", 1)), {5}, {15, 14, 12, 9, 5});
  ExpectValues<float>(RunBoth(Op("CumSum", {x, axis}).Int("reverse", 1).Int("exclusive", 1)), {5}, {14, 12, 9, 5, 0});
  ExpectValues<int64_t>(RunBoth(Op("CumSum", {I64({1, 2, 3, 4}, {2, 2}), I64({-1}, {1})})), {2, 2}, {1, 3, 3, 7});
  ExpectValues<int64_t>(RunBoth(Op("CumSum", {I64({kI64Max, 1}), I64({0}, {})})), {2}, {kI64Max, kI64Min});  // wraps
  ExpectError(Op("CumSum", {x, I64({1}, {})}));
}

TEST(ShapeOps, TriluAndEyeLike) {
  Tensor x = Iota({3, 3});
  ExpectValues<float>(RunBoth(Op("Trilu", {x})), {3, 3}, {0, 1, 2, 0, 4, 5, 0, 0, 8});
  ExpectValues<float>(RunBoth(Op("Trilu", {x, I64({-1}, {})}).Int("upper", 0)), {3, 3}, {0, 0, 0, 3, 0, 0, 6, 7, 0});
  ExpectValues<float>(RunBoth(Op("Trilu", {x, I64({kI64Max}, {})}).Int("upper", 0)), {3, 3},
                      {0, 1, 2, 3, 4, 5, 6, 7, 8});
  ExpectValues<float>(RunBoth(Op("Trilu", {Iota({2, 2, 2}), I64({1}, {})})), {2, 2, 2}, {0, 1, 0, 0, 0, 5, 0, 0});
  ExpectError(Op("Trilu", {Iota({3})}));
  ExpectValues<int32_t>(RunBoth(Op("EyeLike", {Iota({2, 3})}).Int("k", 1).Int("dtype", 6)), {2, 3}, {0, 1, 0, 0, 0, 1});
  ExpectValues<float>(RunBoth(Op("EyeLike", {Iota({2, 2})})), {2, 2}, {1, 0, 0, 1});
  ExpectValues<float>(RunBoth(Op("EyeLike", {Iota({2, 2})}).Int("k", kI64Min)), {2, 2}, {0, 0, 0, 0});
  ExpectError(Op("EyeLike", {Iota({2})}));
}

// ---- ArgMax / ArgMin / TopK / NonZero / OneHot ----

TEST(ShapeOps, ArgMaxArgMin) {
  Tensor x = F({2, 1, 1, 3, 4, 4}, {2, 3});
  ExpectValues<int64_t>(RunBoth(Op("ArgMax", {x}).Int("axis", 1)), {2, 1}, {0, 1});
  ExpectValues<int64_t>(RunBoth(Op("ArgMax", {x}).Int("axis", 1).Int("select_last_index", 1)), {2, 1}, {0, 2});
  ExpectValues<int64_t>(RunBoth(Op("ArgMin", {x}).Int("axis", -1).Int("keepdims", 0)), {2}, {1, 0});
  ExpectValues<int64_t>(RunBoth(Op("ArgMin", {x}).Int("axis", 1).Int("keepdims", 0).Int("select_last_index", 1)), {2},
                        {2, 0});
  ExpectValues<int64_t>(RunBoth(Op("ArgMax", {x})), {1, 3}, {1, 1, 1});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  ExpectValues<int64_t>(RunBoth(Op("ArgMax", {F({1, nan, 5}, {3})}).Int("keepdims", 0)), {}, {1});
  ExpectError(Op("ArgMax", {Tensor(DType::kFloat32, {0, 2})}));
  ExpectError(Op("ArgMax", {x}).Int("axis", 2));
}

TEST(ShapeOps, TopKLargestSmallestTies) {
  Tensor x = F({1, 3, 3, 2, 5, 0}, {2, 3});
  StatusOr<std::vector<Tensor>> r = RunWith(Op("TopK", {x, I64({2})}, 2), false);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ExpectValues<float>((*r)[0], {2, 2}, {3, 3, 5, 2});
  ExpectValues<int64_t>((*r)[1], {2, 2}, {1, 2, 1, 0});
  r = RunWith(Op("TopK", {x, I64({1})}, 2).Int("largest", 0).Int("axis", 0), false);
  ASSERT_TRUE(r.ok());
  ExpectValues<float>((*r)[0], {1, 3}, {1, 3, 0});
  ExpectValues<int64_t>((*r)[1], {1, 3}, {0, 0, 1});
  ExpectError(Op("TopK", {x, I64({4})}, 2));
  ExpectError(Op("TopK", {x, I64({-1})}, 2));
}

TEST(ShapeOps, NonZero) {
  ExpectValues<int64_t>(RunBoth(Op("NonZero", {F({1, 0, 0, 3}, {2, 2})})), {2, 2}, {0, 1, 0, 1});
  ExpectValues<int64_t>(RunBoth(Op("NonZero", {Tensor::FromVector<bool>({false, true, true}, {3})})), {1, 2}, {1, 2});
  ExpectValues<int64_t>(RunBoth(Op("NonZero", {F({0}, {1})})), {1, 0}, {});
  ExpectValues<int64_t>(RunBoth(Op("NonZero", {Tensor::Scalar<float>(5)})), {1, 1}, {0});  // scalar reads as [1]
}

TEST(ShapeOps, OneHot) {
  Tensor values = F({0, 1}, {2});
  ExpectValues<float>(RunBoth(Op("OneHot", {I64({1, -1, 5}), I64({3}, {}), values})), {3, 3},
                      {0, 1, 0, 0, 0, 1, 0, 0, 0});
  ExpectValues<float>(RunBoth(Op("OneHot", {I64({0, 2}), F({3}, {1}), values}).Int("axis", 0)), {3, 2},
                      {1, 0, 0, 0, 0, 1});
  ExpectValues<int64_t>(RunBoth(Op("OneHot", {F({1.7f}, {1}), I64({2}, {}), I64({5, 9})})), {1, 2}, {5, 9});
  ExpectError(Op("OneHot", {I64({1}), I64({0}, {}), values}));
  ExpectError(Op("OneHot", {I64({1}), I64({int64_t{1} << 40}, {}), values}));
  ExpectError(Op("OneHot", {I64({1}), I64({3}, {}), F({1, 2, 3}, {3})}));
}

// ---- Fast kernels against the reference on random data and awkward shapes ----

Tensor RandomTensor(DType dtype, const Shape& shape, std::mt19937& rng) {
  Tensor t(dtype, shape);
  uint8_t* p = static_cast<uint8_t*>(t.mutable_raw());
  for (int64_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(rng());
  return t;
}

Shape RandomShape(std::mt19937& rng, int rank, int max_dim) {
  Shape s(rank);
  for (int64_t& d : s) d = std::uniform_int_distribution<int>(1, max_dim)(rng);
  return s;
}

const DType kTypes[] = {DType::kFloat32, DType::kInt64, DType::kUInt8, DType::kFloat16, DType::kInt32};

void ExpectFastMatchesRef(const Call& c) {
  StatusOr<std::vector<Tensor>> ref = RunWith(c, false);
  StatusOr<std::vector<Tensor>> fast = RunWith(c, true);
  ASSERT_EQ(ref.ok(), fast.ok()) << (ref.ok() ? fast.status().message() : ref.status().message());
  if (!ref.ok()) return;
  ASSERT_TRUE((*ref)[0].BitEqual((*fast)[0])) << c.op << " shapes " << ShapeToString((*ref)[0].shape()) << " vs "
                                              << ShapeToString((*fast)[0].shape());
}

TEST(ShapeOps, FastTransposeMatchesReference) {
  std::mt19937 rng(1);
  for (int iter = 0; iter < 300; ++iter) {
    const int rank = std::uniform_int_distribution<int>(0, 5)(rng);
    Shape shape = RandomShape(rng, rank, 7);
    if (iter % 5 == 0 && rank > 0) shape[rng() % rank] = 1;
    std::vector<int64_t> perm(rank);
    for (int i = 0; i < rank; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    Tensor x = RandomTensor(kTypes[iter % 5], shape, rng);
    ExpectFastMatchesRef(Op("Transpose", {x}).Ints("perm", perm));
  }
  // The LLM permutations at sizes that take the OpenMP path, and odd tile remainders.
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{2, 128, 16, 64}, {0, 2, 1, 3}}, {{2, 16, 128, 64}, {0, 2, 1, 3}}, {{2, 16, 130, 66}, {0, 1, 3, 2}},
      {{2, 130, 16, 66}, {0, 2, 3, 1}}, {{515, 517}, {1, 0}},             {{3, 1, 33, 1, 65}, {4, 2, 0, 1, 3}}};
  for (const auto& [shape, perm] : cases)
    for (DType t : {DType::kFloat32, DType::kFloat16, DType::kInt64})
      ExpectFastMatchesRef(Op("Transpose", {RandomTensor(t, shape, rng)}).Ints("perm", perm));
}

TEST(ShapeOps, FastConcatMatchesReference) {
  std::mt19937 rng(2);
  for (int iter = 0; iter < 200; ++iter) {
    const int rank = std::uniform_int_distribution<int>(1, 4)(rng);
    const Shape base = RandomShape(rng, rank, 6);
    const int axis = std::uniform_int_distribution<int>(0, rank - 1)(rng);
    const DType t = kTypes[iter % 5];
    Call c = Op("Concat", {});
    const int parts = std::uniform_int_distribution<int>(1, 4)(rng);
    for (int p = 0; p < parts; ++p) {
      Shape s = base;
      s[axis] = std::uniform_int_distribution<int>(0, 5)(rng);
      c.inputs.push_back(RandomTensor(t, s, rng));
    }
    c.Int("axis", axis - (iter % 2 ? rank : 0));
    ExpectFastMatchesRef(c);
  }
  // KV-cache append at OpenMP sizes: [B, H, past, D] ++ [B, H, 1, D] on the sequence axis.
  ExpectFastMatchesRef(Op("Concat", {RandomTensor(DType::kFloat32, {2, 16, 200, 64}, rng),
                                     RandomTensor(DType::kFloat32, {2, 16, 1, 64}, rng)})
                           .Int("axis", 2));
}

TEST(ShapeOps, FastSliceMatchesReference) {
  std::mt19937 rng(3);
  auto pick = [&](int lo, int hi) { return static_cast<int64_t>(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  for (int iter = 0; iter < 400; ++iter) {
    const int rank = pick(1, 4);
    const Shape shape = RandomShape(rng, rank, 7);
    std::vector<int64_t> axes;
    for (int d = 0; d < rank; ++d)
      if (rng() % 2) axes.push_back(rng() % 2 ? d : d - rank);
    if (axes.empty()) axes.push_back(0);
    std::vector<int64_t> starts, ends, steps;
    for (size_t i = 0; i < axes.size(); ++i) {
      starts.push_back(rng() % 8 == 0 ? kI64Min : pick(-9, 9));
      ends.push_back(rng() % 8 == 0 ? kI64Max : pick(-9, 9));
      int64_t step = pick(-3, 3);
      steps.push_back(step == 0 ? 1 : step);
    }
    Tensor x = RandomTensor(kTypes[iter % 5], shape, rng);
    ExpectFastMatchesRef(Op("Slice", {x, I64(starts), I64(ends), I64(axes), I64(steps)}));
  }
  // Taking the last token's logits and a strided view at OpenMP sizes.
  Tensor big = RandomTensor(DType::kFloat32, {2, 64, 4096}, rng);
  ExpectFastMatchesRef(Op("Slice", {big, I64({-1}), I64({kI64Max}), I64({1})}));
  ExpectFastMatchesRef(Op("Slice", {big, I64({1, 4095}), I64({64, 0}), I64({1, 2}), I64({3, -2})}));
  ExpectFastMatchesRef(Op("Slice", {big, I64({0}), I64({kI64Max})}));
}

TEST(ShapeOps, FastGatherMatchesReference) {
  std::mt19937 rng(4);
  for (int iter = 0; iter < 200; ++iter) {
    const int rank = std::uniform_int_distribution<int>(1, 4)(rng);
    const Shape shape = RandomShape(rng, rank, 6);
    const int axis = std::uniform_int_distribution<int>(0, rank - 1)(rng);
    const int64_t dim = shape[axis];
    Shape ishape = RandomShape(rng, std::uniform_int_distribution<int>(0, 2)(rng), 4);
    Tensor idx(DType::kInt64, ishape);
    for (int64_t i = 0; i < idx.numel(); ++i)
      idx.mutable_data<int64_t>()[i] = std::uniform_int_distribution<int64_t>(-dim, dim - 1)(rng);
    ExpectFastMatchesRef(Op("Gather", {RandomTensor(kTypes[iter % 5], shape, rng), idx}).Int("axis", axis));
  }
  // Embedding lookup: [vocab, hidden] by [batch, seq] token ids.
  Tensor table = RandomTensor(DType::kFloat32, {1000, 512}, rng);
  Tensor ids(DType::kInt64, {2, 300});
  for (int64_t i = 0; i < ids.numel(); ++i) ids.mutable_data<int64_t>()[i] = rng() % 1000;
  ExpectFastMatchesRef(Op("Gather", {table, ids}));
}

TEST(ShapeOps, FastExpandMatchesReference) {
  std::mt19937 rng(5);
  for (int iter = 0; iter < 300; ++iter) {
    const int rank = std::uniform_int_distribution<int>(0, 5)(rng);
    Shape out = RandomShape(rng, rank, 5);
    const int in_rank = std::uniform_int_distribution<int>(0, rank)(rng);
    Shape in(out.end() - in_rank, out.end());
    for (int64_t& d : in)
      if (rng() % 2) d = 1;
    Shape target = out;
    for (size_t d = 0; d < target.size(); ++d)
      if (rng() % 4 == 0 && static_cast<int>(d) >= rank - in_rank) target[d] = 1;  // 1 keeps the input's dim
    ExpectFastMatchesRef(Op("Expand", {RandomTensor(kTypes[iter % 5], in, rng), I64(target)}));
  }
  // GQA key/value head replication and a causal-mask broadcast at OpenMP sizes.
  ExpectFastMatchesRef(Op("Expand", {RandomTensor(DType::kFloat32, {2, 4, 1, 128, 64}, rng), I64({2, 4, 4, 128, 64})}));
  ExpectFastMatchesRef(Op("Expand", {RandomTensor(DType::kFloat32, {1, 1, 512, 1}, rng), I64({2, 8, 512, 512})}));
}

TEST(ShapeOps, EveryOpIsRegistered) {
  for (const char* op : {"Constant", "ConstantOfShape", "Identity", "Dropout", "Shape", "Size", "Reshape", "Flatten",
                         "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherND",
                         "GatherElements", "ScatterND", "ScatterElements", "Expand", "Range", "CumSum", "Trilu",
                         "Tile", "Pad", "ArgMax", "ArgMin", "TopK", "NonZero", "OneHot", "EyeLike"})
    EXPECT_NE(FindOpKernels("", op), nullptr) << op;
  for (const char* op : {"Transpose", "Concat", "Slice", "Gather", "Expand"})
    EXPECT_NE(FindOpKernels("", op)->fast, nullptr) << op;
}

}  // namespace
}  // namespace qc
