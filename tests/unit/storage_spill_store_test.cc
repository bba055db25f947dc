// The RocksDB MessageSpill: records come back per queue in id order, survive a reopen once synced,
// and Truncate drops exactly what the SpillKeep does not keep.
#include "storage/spill_store.h"

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace haven::storage {
namespace {

class SpillStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/haven-spill-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<SpillStore> Open() {
    auto s = SpillStore::Open(SpillDir(dir_));
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }

  static std::vector<uint64_t> Ids(const std::vector<mq::MessageSpill::Record>& records) {
    std::vector<uint64_t> out;
    for (const auto& [id, record] : records) out.push_back(id);
    return out;
  }

  std::string dir_;
};

TEST_F(SpillStoreTest, ReadsInIdOrderPerQueueAndSurvivesReopenAfterSync) {
  {
    auto spill = Open();
    ASSERT_NE(spill, nullptr);
    for (uint64_t id : {300u, 5u, 256u, 1u << 20}) spill->Append(2, id, "q2-" + std::to_string(id));
    spill->Append(1, 7, "q1");
    spill->Append(3, 1, "q3");
    EXPECT_EQ(Ids(spill->Read(2, 0, 10)), (std::vector<uint64_t>{5, 256, 300, 1u << 20}));
    EXPECT_EQ(Ids(spill->Read(2, 256, 2)), (std::vector<uint64_t>{256, 300}));
    EXPECT_EQ(spill->Read(2, 301, 1).front().second, "q2-" + std::to_string(1u << 20));
    EXPECT_TRUE(spill->Read(4, 0, 10).empty());
    spill->Append(2, 5, "again");  // a replay writes the same key again
    EXPECT_EQ(spill->Read(2, 0, 1).front().second, "again");
    ASSERT_TRUE(spill->Sync().ok());
  }
  auto spill = Open();
  ASSERT_NE(spill, nullptr);
  EXPECT_EQ(Ids(spill->Read(2, 0, 10)), (std::vector<uint64_t>{5, 256, 300, 1u << 20}));
  EXPECT_EQ(Ids(spill->Read(1, 0, 10)), (std::vector<uint64_t>{7}));
}

TEST_F(SpillStoreTest, TruncateKeepsLiveRangesAndLaterQueues) {
  auto spill = Open();
  ASSERT_NE(spill, nullptr);
  for (uint64_t uid = 1; uid <= 5; ++uid) {
    for (uint64_t id = 1; id <= 10; ++id) spill->Append(uid, id, "m");
  }
  mq::SpillKeep keep;
  keep.next_queue_uid = 5;                 // queue 5 came after the snapshot: untouched
  keep.first_kept_id = {{2, 4}, {4, 11}};  // 1 and 3 were deleted; 4 has consumed everything
  spill->Truncate(keep);
  EXPECT_TRUE(spill->Read(1, 0, 100).empty());
  EXPECT_EQ(Ids(spill->Read(2, 0, 100)), (std::vector<uint64_t>{4, 5, 6, 7, 8, 9, 10}));
  EXPECT_TRUE(spill->Read(3, 0, 100).empty());
  EXPECT_TRUE(spill->Read(4, 0, 100).empty());
  EXPECT_EQ(spill->Read(5, 0, 100).size(), 10u);
}

TEST(SpillStoreOpen, RefusesTinyOptionsAndUnusableDirs) {
  SpillStoreOptions tiny;
  tiny.write_buffer_bytes = 1024;
  EXPECT_EQ(SpillStore::Open("/tmp/haven-spill-never", tiny).status().code(),
            Code::kInvalidArgument);
  EXPECT_FALSE(SpillStore::Open("/proc/haven-spill").ok());
}

}  // namespace
}  // namespace haven::storage
