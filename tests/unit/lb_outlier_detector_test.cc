// Outlier detection: ejection after N consecutive failures, doubling, automatic return, max share.
#include "lb/outlier_detector.h"

#include <gtest/gtest.h>

#include <string>

namespace haven::lb {
namespace {

std::vector<Endpoint> Numbered(int n) {
  std::vector<Endpoint> out;
  for (int i = 0; i < n; ++i) out.push_back({"e" + std::to_string(i), "h", 80, 1});
  return out;
}

OutlierOptions Opts() {
  OutlierOptions o;
  o.consecutive_failures = 3;
  o.base_ejection_ms = 1'000;
  o.max_ejection_ms = 5'000;
  o.max_ejected_fraction = 0.5;
  return o;
}

// Feeds failures until one ejects (or `limit` is reached); returns how many it took.
int FailUntilEjected(OutlierDetector& d, const std::string& id, MonoMs now, int limit = 100) {
  for (int i = 1; i <= limit; ++i) {
    if (d.OnResult(id, true, now)) return i;
  }
  return -1;
}

TEST(OutlierDetector, EjectsAfterConsecutiveFailures) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  EXPECT_FALSE(d.OnResult("e0", true, 0));
  EXPECT_FALSE(d.OnResult("e0", true, 0));
  EXPECT_FALSE(d.IsEjected("e0", 0));
  EXPECT_TRUE(d.OnResult("e0", true, 0));
  EXPECT_TRUE(d.IsEjected("e0", 0));
  EXPECT_EQ(d.ejected_count(0), 1u);
  EXPECT_EQ(d.ejections_total(), 1u);
  EXPECT_FALSE(d.IsEjected("e1", 0));
}

TEST(OutlierDetector, SuccessResetsTheStreak) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(d.OnResult("e0", true, 0));
    EXPECT_FALSE(d.OnResult("e0", true, 0));
    EXPECT_FALSE(d.OnResult("e0", false, 0));
  }
  EXPECT_FALSE(d.IsEjected("e0", 0));
}

TEST(OutlierDetector, EjectionTimeDoublesUpToMaxAndEndsAutomatically) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  MonoMs now = 10'000;
  for (int64_t expected : {1'000, 2'000, 4'000, 5'000, 5'000}) {
    ASSERT_EQ(FailUntilEjected(d, "e0", now), 3);
    EXPECT_TRUE(d.IsEjected("e0", now + expected - 1)) << expected;
    EXPECT_FALSE(d.IsEjected("e0", now + expected)) << expected;
    now += expected;
  }
  EXPECT_EQ(d.ejections_total(), 5u);
}

TEST(OutlierDetector, LateFailuresWhileEjectedDoNotExtend) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  ASSERT_EQ(FailUntilEjected(d, "e0", 0), 3);
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(d.OnResult("e0", true, 500));
  EXPECT_FALSE(d.IsEjected("e0", 1'000));
}

TEST(OutlierDetector, LongHealthySpellResetsDoubling) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  ASSERT_EQ(FailUntilEjected(d, "e0", 0), 3);      // 1 s
  ASSERT_EQ(FailUntilEjected(d, "e0", 1'000), 3);  // 2 s, until 3'000
  d.OnResult("e0", false, 3'000 + 5'000);          // healthy for max_ejection_ms after returning
  ASSERT_EQ(FailUntilEjected(d, "e0", 9'000), 3);
  EXPECT_FALSE(d.IsEjected("e0", 10'000));  // back to the 1 s base
}

TEST(OutlierDetector, NeverEjectsMoreThanTheMaxShare) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(5));  // 0.5 of 5 -> at most 2
  EXPECT_EQ(FailUntilEjected(d, "e0", 0), 3);
  EXPECT_EQ(FailUntilEjected(d, "e1", 0), 3);
  EXPECT_EQ(FailUntilEjected(d, "e2", 0), -1);
  EXPECT_FALSE(d.IsEjected("e2", 0));
  EXPECT_EQ(d.ejected_count(0), 2u);
  // Once e0 and e1 return, e2's streak is still counted and it is ejected on its next failure.
  EXPECT_TRUE(d.OnResult("e2", true, 1'000));
}

TEST(OutlierDetector, AtLeastOneEndpointStays) {
  OutlierOptions o = Opts();
  o.max_ejected_fraction = 1.0;
  OutlierDetector d(o);
  d.SetEndpoints(Numbered(2));
  EXPECT_EQ(FailUntilEjected(d, "e0", 0), 3);
  EXPECT_EQ(FailUntilEjected(d, "e1", 0), -1);
  OutlierDetector single(o);
  single.SetEndpoints(Numbered(1));
  EXPECT_EQ(FailUntilEjected(single, "e0", 0), -1);
}

TEST(OutlierDetector, ForgetsRemovedAndIgnoresUnknown) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  ASSERT_EQ(FailUntilEjected(d, "e0", 0), 3);
  d.SetEndpoints(Numbered(4));  // same set: state kept
  EXPECT_TRUE(d.IsEjected("e0", 10));
  auto eps = Numbered(4);
  eps.erase(eps.begin());
  d.SetEndpoints(eps);
  EXPECT_FALSE(d.IsEjected("e0", 10));
  EXPECT_EQ(d.ejected_count(10), 0u);
  EXPECT_EQ(FailUntilEjected(d, "nobody", 10), -1);
  EXPECT_FALSE(d.IsEjected("nobody", 10));
}

TEST(OutlierDetector, ValidatesAndClampsOptions) {
  EXPECT_TRUE(ValidateOutlierOptions(OutlierOptions{}).ok());
  OutlierOptions bad;
  bad.consecutive_failures = 0;
  EXPECT_FALSE(ValidateOutlierOptions(bad).ok());
  bad = {};
  bad.max_ejected_fraction = 1.5;
  EXPECT_FALSE(ValidateOutlierOptions(bad).ok());
  bad = {};
  bad.max_ejection_ms = 10;
  EXPECT_FALSE(ValidateOutlierOptions(bad).ok());
  OutlierOptions wild;
  wild.consecutive_failures = -4;
  wild.base_ejection_ms = -1;
  wild.max_ejection_ms = 1LL << 62;
  OutlierDetector d(wild);
  EXPECT_EQ(d.options().consecutive_failures, 1);
  EXPECT_GE(d.options().base_ejection_ms, 1);
  EXPECT_LE(d.options().max_ejection_ms, 24LL * 3600 * 1000);
}

TEST(OutlierDetector, ForgiveEndsAnEjectionAndTheStreakButKeepsTheDoubling) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(4));
  ASSERT_EQ(FailUntilEjected(d, "e0", 0), 3);
  ASSERT_TRUE(d.IsEjected("e0", 100));
  d.Forgive("e0", 100);
  EXPECT_FALSE(d.IsEjected("e0", 100)) << "a passing health check ends the ejection at once";
  EXPECT_EQ(d.ejected_count(100), 0u);
  // The streak starts over: two failures do not eject, the third does, for the doubled time.
  EXPECT_FALSE(d.OnResult("e0", true, 200));
  EXPECT_FALSE(d.OnResult("e0", true, 200));
  EXPECT_TRUE(d.OnResult("e0", true, 200));
  EXPECT_TRUE(d.IsEjected("e0", 200 + 1'999));
  EXPECT_FALSE(d.IsEjected("e0", 200 + 2'000));
  // Forgiving a non-ejected endpoint resets its streak only; unknown ids are ignored.
  EXPECT_FALSE(d.OnResult("e1", true, 0));
  EXPECT_FALSE(d.OnResult("e1", true, 0));
  d.Forgive("e1", 0);
  EXPECT_FALSE(d.OnResult("e1", true, 0));
  EXPECT_FALSE(d.OnResult("e1", true, 0));
  EXPECT_FALSE(d.IsEjected("e1", 0));
  d.Forgive("nope", 0);
  EXPECT_EQ(d.ejections_total(), 2u);
}

// A refused or reset connection is a definite sign of death: one ejects at once, for a reason
// an active probe may disprove.
TEST(OutlierDetector, ConnectFailureEjectsAtOnce) {
  OutlierDetector d(Opts());
  d.SetEndpoints(Numbered(3));
  EXPECT_EQ(d.OnOutcome("e1", Outcome::kConnectFailure, 10), EjectionReason::kConnect);
  EXPECT_TRUE(d.IsEjected("e1", 10));
  EXPECT_TRUE(d.WantsProbe("e1", 10));
  EXPECT_EQ(d.reason("e1", 10), EjectionReason::kConnect);
  d.Forgive("e1", 20);  // the probe got an answer
  EXPECT_FALSE(d.IsEjected("e1", 20));
  EXPECT_FALSE(d.WantsProbe("e1", 20));
  EXPECT_EQ(d.reason("e1", 20), EjectionReason::kNone);
}

TEST(OutlierDetector, ConnectFailuresThresholdIsASetting) {
  OutlierOptions o = Opts();
  o.consecutive_connect_failures = 2;
  OutlierDetector d(o);
  d.SetEndpoints(Numbered(3));
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kConnectFailure, 0), EjectionReason::kNone);
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kSuccess, 0), EjectionReason::kNone);  // streak broken
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kConnectFailure, 0), EjectionReason::kNone);
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kConnectFailure, 0), EjectionReason::kConnect);
}

TEST(OutlierDetector, TimeoutsEjectAsTimeoutsAndMayBeProbed) {
  OutlierDetector d(Opts());  // 3 in a row
  d.SetEndpoints(Numbered(3));
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kTimeout, 0), EjectionReason::kNone);
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kTimeout, 0), EjectionReason::kNone);
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kTimeout, 0), EjectionReason::kTimeout);
  EXPECT_TRUE(d.WantsProbe("e0", 1));
  // A streak with a 5xx in it is about answers a probe cannot judge: no probe.
  EXPECT_EQ(d.OnOutcome("e1", Outcome::kTimeout, 0), EjectionReason::kNone);
  EXPECT_EQ(d.OnOutcome("e1", Outcome::kFailure, 0), EjectionReason::kNone);
  EXPECT_FALSE(d.IsEjected("e1", 0));
  OutlierDetector d2(Opts());
  d2.SetEndpoints(Numbered(3));
  d2.OnOutcome("e1", Outcome::kTimeout, 0);
  d2.OnOutcome("e1", Outcome::kFailure, 0);
  EXPECT_EQ(d2.OnOutcome("e1", Outcome::kTimeout, 0), EjectionReason::kFailures);
  EXPECT_TRUE(d2.IsEjected("e1", 1));
  EXPECT_FALSE(d2.WantsProbe("e1", 1));
  EXPECT_EQ(EjectionReasonName(EjectionReason::kFailures), "failures");
}

TEST(OutlierDetector, ConnectEjectionStillHonoursTheMaxShare) {
  OutlierDetector d(Opts());  // at most half of 3: one at a time
  d.SetEndpoints(Numbered(3));
  EXPECT_EQ(d.OnOutcome("e0", Outcome::kConnectFailure, 0), EjectionReason::kConnect);
  EXPECT_EQ(d.OnOutcome("e1", Outcome::kConnectFailure, 0), EjectionReason::kNone);
  EXPECT_FALSE(d.IsEjected("e1", 0));
}

TEST(OutlierDetector, ValidatesConnectFailures) {
  OutlierOptions o = Opts();
  o.consecutive_connect_failures = 0;
  EXPECT_FALSE(ValidateOutlierOptions(o).ok());
}

}  // namespace
}  // namespace haven::lb
