// The linearizability checker against hand-made histories whose answer is known.
#include "linearizability.h"

#include <gtest/gtest.h>

namespace haven::sim {
namespace {

Op Put(int c, std::string v, int64_t call, int64_t ret, std::string key = "k") {
  Op op;
  op.client = c;
  op.key = std::move(key);
  op.kind = OpKind::kPut;
  op.value = std::move(v);
  op.call = call;
  op.ret = ret;
  return op;
}

Op Get(int c, std::optional<std::string> out, int64_t call, int64_t ret, std::string key = "k") {
  Op op;
  op.client = c;
  op.key = std::move(key);
  op.kind = OpKind::kGet;
  op.output = std::move(out);
  op.call = call;
  op.ret = ret;
  return op;
}

Op Cas(int c, std::string expected, std::string v, bool ok, int64_t call, int64_t ret) {
  Op op;
  op.client = c;
  op.key = "k";
  op.kind = OpKind::kCas;
  op.expected = std::move(expected);
  op.value = std::move(v);
  op.cas_ok = ok;
  op.call = call;
  op.ret = ret;
  return op;
}

Op Unknown(Op op) {
  op.unknown = true;
  op.ret = Op::kNever;
  return op;
}

Verdict Check(const std::vector<Op>& h) { return CheckLinearizable(h).verdict; }

TEST(Linearizability, EmptyAndSequentialHistoriesAreLinearizable) {
  EXPECT_EQ(Check({}), Verdict::kLinearizable);
  EXPECT_EQ(Check({Get(1, std::nullopt, 0, 1), Put(1, "a", 2, 3), Get(2, "a", 4, 5),
                   Put(2, "b", 6, 7), Get(1, "b", 8, 9)}),
            Verdict::kLinearizable);
}

TEST(Linearizability, ConcurrentReadMaySeeEitherValue) {
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Put(2, "b", 2, 10), Get(3, "a", 3, 4), Get(3, "b", 5, 6)}),
            Verdict::kLinearizable);
  EXPECT_EQ(Check({Put(1, "a", 0, 10), Get(2, std::nullopt, 1, 2), Get(2, "a", 3, 4)}),
            Verdict::kLinearizable);
}

TEST(Linearizability, StaleReadAfterCompletedWriteIsNot) {
  auto r = CheckLinearizable({Put(1, "a", 0, 1), Put(1, "b", 2, 3), Get(2, "a", 4, 5)});
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.key, "k");
  EXPECT_NE(r.reason.find("get(k)->a"), std::string::npos) << r.reason;
}

TEST(Linearizability, AbsentAfterCompletedWriteIsNot) {
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Get(2, std::nullopt, 2, 3)}), Verdict::kNotLinearizable);
}

TEST(Linearizability, ReadOfValueNeverWrittenIsNot) {
  auto r = CheckLinearizable({Put(1, "a", 0, 1), Get(2, "zzz", 0, 5)});
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_NE(r.reason.find("never written"), std::string::npos) << r.reason;
}

TEST(Linearizability, ReadsSeeingWritesInOppositeOrdersIsNot) {
  // a and b are concurrent, but one reader sees a then b and the other b then a, both with
  // their reads non-overlapping: no single order explains both.
  EXPECT_EQ(Check({Put(1, "a", 0, 100), Put(2, "b", 0, 100), Get(3, "a", 10, 20),
                   Get(3, "b", 30, 40), Get(4, "b", 10, 20), Get(4, "a", 30, 40)}),
            Verdict::kNotLinearizable);
}

TEST(Linearizability, UnknownOutcomeMayTakeEffectLate) {
  // The put timed out; a read long after its call sees its value: legal.
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Unknown(Put(2, "b", 2, 0)), Get(3, "a", 10, 11),
                   Get(3, "b", 50, 51)}),
            Verdict::kLinearizable);
  // ...or never: legal too.
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Unknown(Put(2, "b", 2, 0)), Get(3, "a", 50, 51)}),
            Verdict::kLinearizable);
  // But not before it was called.
  EXPECT_EQ(Check({Get(3, "b", 0, 1), Unknown(Put(2, "b", 2, 0))}), Verdict::kNotLinearizable);
  // And once seen, it cannot be undone by nothing.
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Unknown(Put(2, "b", 2, 0)), Get(3, "b", 10, 11),
                   Get(3, "a", 50, 51)}),
            Verdict::kNotLinearizable);
}

TEST(Linearizability, UnknownReadsConstrainNothing) {
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Unknown(Get(2, "zzz", 2, 0))}), Verdict::kLinearizable);
}

TEST(Linearizability, CompareAndSwap) {
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Cas(2, "a", "b", true, 2, 3), Get(1, "b", 4, 5)}),
            Verdict::kLinearizable);
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Cas(2, "x", "b", true, 2, 3)}), Verdict::kNotLinearizable);
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Cas(2, "a", "b", false, 2, 3)}), Verdict::kNotLinearizable);
  // Two concurrent CAS from the same value: only one may win.
  EXPECT_EQ(
      Check({Put(1, "a", 0, 1), Cas(2, "a", "b", true, 2, 10), Cas(3, "a", "c", true, 2, 10)}),
      Verdict::kNotLinearizable);
  EXPECT_EQ(Check({Put(1, "a", 0, 1), Unknown(Cas(2, "a", "b", true, 2, 0)), Get(1, "b", 20, 21)}),
            Verdict::kLinearizable);
}

TEST(Linearizability, KeysAreIndependent) {
  auto r =
      CheckLinearizable({Put(1, "a", 0, 1, "x"), Get(2, "a", 2, 3, "x"), Put(1, "b", 0, 1, "y"),
                         Put(1, "c", 2, 3, "y"), Get(2, "b", 4, 5, "y")});
  EXPECT_EQ(r.verdict, Verdict::kNotLinearizable);
  EXPECT_EQ(r.key, "y");
}

TEST(Linearizability, LongHistoryWithConcurrencyFinishes) {
  // 300 rounds of 4 concurrent puts and a read of one of them: 1,500 ops, quick with memoization.
  std::vector<Op> h;
  for (int r = 0; r < 300; ++r) {
    int64_t t = r * 100;
    for (int c = 0; c < 4; ++c) h.push_back(Put(c, "v" + std::to_string(r * 4 + c), t, t + 50));
    h.push_back(Get(9, "v" + std::to_string(r * 4 + r % 4), t + 60, t + 70));
  }
  EXPECT_EQ(Check(h), Verdict::kLinearizable);
  h.push_back(Get(9, "v0", 40'000, 40'001));
  EXPECT_EQ(Check(h), Verdict::kNotLinearizable);
}

TEST(Linearizability, HopelessSearchIsUndecidedNotHung) {
  std::vector<Op> h;
  for (int i = 0; i < 200; ++i) h.push_back(Put(i, "v" + std::to_string(i), 0, 1000));
  h.push_back(Get(999, "v7", 2000, 2001));
  h.push_back(Get(999, "v8", 3000, 3001));
  auto r = CheckLinearizable(h, {.max_ops_per_key = 2000, .max_steps = 100'000});
  EXPECT_EQ(r.verdict, Verdict::kUndecided);
}

TEST(Linearizability, OverTheLimitIsUndecided) {
  std::vector<Op> h;
  for (int i = 0; i < 30; ++i) h.push_back(Put(1, "v" + std::to_string(i), 2 * i, 2 * i + 1));
  auto r = CheckLinearizable(h, {.max_ops_per_key = 20, .max_steps = 1000});
  EXPECT_EQ(r.verdict, Verdict::kUndecided);
}

}  // namespace
}  // namespace haven::sim
