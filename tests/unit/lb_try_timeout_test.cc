// TryTimeout and LatencyWindow: the adaptive per-try timeout follows the recent p99 within its
// floor and ceiling, forgets old samples, and stays at the ceiling until it has learned enough.
#include "lb/try_timeout.h"

#include <gtest/gtest.h>

namespace haven::lb {
namespace {

TryTimeoutOptions Opts() {
  TryTimeoutOptions o;
  o.multiplier = 3;
  o.floor_ms = 25;
  o.ceiling_ms = 5'000;
  o.min_samples = 20;
  o.window_ms = 10'000;
  return o;
}

TEST(LatencyWindow, QuantileIsTheBucketBoundAboveTheSample) {
  LatencyWindow w(10'000);
  for (int i = 0; i < 99; ++i) w.Record(1'000, 2'000);  // 2 ms
  w.Record(1'000, 80'000);                              // one 80 ms outlier: the p100
  int64_t p50 = w.QuantileUs(1'000, 0.5);
  EXPECT_GE(p50, 2'000);
  EXPECT_LE(p50, 2'500);  // buckets are 25% apart
  EXPECT_LE(w.QuantileUs(1'000, 0.99), 2'500);
  EXPECT_GE(w.QuantileUs(1'000, 1.0), 80'000);
  EXPECT_LE(w.QuantileUs(1'000, 1.0), 100'000);
  EXPECT_EQ(w.count(1'000), 100);
}

TEST(LatencyWindow, ForgetsSamplesOlderThanTheWindow) {
  LatencyWindow w(10'000);
  for (int i = 0; i < 50; ++i) w.Record(1'000, 900'000);
  EXPECT_EQ(w.count(6'000), 50);  // still within the window
  EXPECT_EQ(w.count(25'000), 0);  // two half windows later: gone
  EXPECT_EQ(w.QuantileUs(25'000, 0.99), 0);
  for (int i = 0; i < 50; ++i) w.Record(25'000, 1'000);
  EXPECT_LE(w.QuantileUs(25'000, 0.99), 1'250);
}

TEST(LatencyWindow, ExtremeSamplesStayInRange) {
  LatencyWindow w(10'000);
  w.Record(0, -5);
  w.Record(0, 0);
  w.Record(0, int64_t{1} << 50);
  EXPECT_EQ(w.count(0), 3);
  EXPECT_GT(w.QuantileUs(0, 1.0), 0);
}

TEST(TryTimeout, CeilingUntilEnoughSamples) {
  TryTimeout t(Opts());
  EXPECT_EQ(t.TimeoutMs(0), 5'000);
  for (int i = 0; i < 19; ++i) t.OnSuccess(0, 2'000);
  EXPECT_EQ(t.TimeoutMs(0), 5'000);
  t.OnSuccess(0, 2'000);
  EXPECT_EQ(t.TimeoutMs(0), 25);  // 3 x p99 (~2.5 ms) is below the 25 ms floor
}

TEST(TryTimeout, MultipleOfP99WithinFloorAndCeiling) {
  TryTimeout t(Opts());
  for (int i = 0; i < 100; ++i) t.OnSuccess(0, 40'000);  // 40 ms answers
  int64_t ms = t.TimeoutMs(0);
  EXPECT_GE(ms, 120);  // 3 x 40 ms
  EXPECT_LE(ms, 150);  // 3 x the bucket bound (<= 50 ms)
  TryTimeout slow(Opts());
  for (int i = 0; i < 100; ++i) slow.OnSuccess(0, 3'000'000);  // 3 s answers
  EXPECT_EQ(slow.TimeoutMs(0), 5'000);                         // the ceiling
}

TEST(TryTimeout, ZeroMultiplierIsTheFixedCeiling) {
  TryTimeoutOptions o = Opts();
  o.multiplier = 0;
  TryTimeout t(o);
  for (int i = 0; i < 100; ++i) t.OnSuccess(0, 1'000);
  EXPECT_EQ(t.TimeoutMs(0), 5'000);
}

TEST(TryTimeout, FollowsALatencyShiftWithinTheWindow) {
  TryTimeout t(Opts());
  for (int i = 0; i < 100; ++i) t.OnSuccess(0, 1'000);
  EXPECT_EQ(t.TimeoutMs(0), 25);
  for (int i = 0; i < 100; ++i) t.OnSuccess(30'000, 100'000);  // later, 100 ms answers
  EXPECT_GE(t.TimeoutMs(30'000), 300);
}

TEST(TryTimeout, ValidationAndClamping) {
  EXPECT_TRUE(ValidateTryTimeoutOptions(Opts()).ok());
  TryTimeoutOptions bad = Opts();
  bad.multiplier = 101;
  EXPECT_FALSE(ValidateTryTimeoutOptions(bad).ok());
  bad = Opts();
  bad.floor_ms = 0;
  EXPECT_FALSE(ValidateTryTimeoutOptions(bad).ok());
  bad = Opts();
  bad.window_ms = 10;
  EXPECT_FALSE(ValidateTryTimeoutOptions(bad).ok());
  TryTimeoutOptions wild = Opts();
  wild.floor_ms = 10'000;  // above the ceiling: clamped to it
  TryTimeout t(wild);
  EXPECT_EQ(t.options().floor_ms, 5'000);
}

}  // namespace
}  // namespace haven::lb
