// ProcStatusKiB reads a field of /proc/PID/status in KiB, and says -1 for what it cannot read.
#include "base/proc_status.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace haven {
namespace {

TEST(ProcStatusTest, OwnResidentSetGrowsWithTouchedMemory) {
  const int64_t before = ProcStatusKiB(getpid(), "VmRSS");
  ASSERT_GT(before, 0);
  std::vector<char> block(size_t{64} << 20, 1);  // 64 MiB, every page written
  const int64_t after = ProcStatusKiB(getpid(), "VmRSS");
  EXPECT_GE(after, before + (48 << 10)) << "block " << static_cast<int>(block[block.size() / 2]);
  EXPECT_GE(ProcStatusKiB(getpid(), "VmHWM"), after);
}

TEST(ProcStatusTest, UnknownFieldOrProcessIsMinusOne) {
  EXPECT_EQ(ProcStatusKiB(getpid(), "NoSuchField"), -1);
  EXPECT_EQ(ProcStatusKiB(getpid(), "VmRS"), -1);  // a prefix of a field is not the field
  EXPECT_EQ(ProcStatusKiB(-1, "VmRSS"), -1);
}

}  // namespace
}  // namespace haven
