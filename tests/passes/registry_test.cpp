// The pass registry: names are unique, every entry constructs, unknown names are rejected.
#include <gtest/gtest.h>

#include <set>

#include "passes/registry.h"

namespace qc {
namespace {

TEST(PassRegistryTest, EveryPassConstructsWithItsName) {
  std::set<std::string> names;
  for (const PassInfo& info : AllPasses()) {
    EXPECT_TRUE(names.insert(info.name).second) << "duplicate pass " << info.name;
    EXPECT_NE(std::string(info.description), "");
    std::unique_ptr<Pass> pass = info.create();
    ASSERT_NE(pass, nullptr);
    EXPECT_EQ(std::string(pass->Name()), info.name);
  }
}

TEST(PassRegistryTest, Negative_UnknownPass) {
  auto p = CreatePipeline("absmax,no-such-pass");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("no-such-pass"), std::string::npos);
  EXPECT_FALSE(CreatePipeline("").ok());
}

}  // namespace
}  // namespace qc
