// Linearizability checker for a per-key register (put / get / cas), Wing & Gong with Lowe's and
// Porcupine's memoization: decides whether a client history could have come from one atomic copy.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace haven::sim {

enum class OpKind { kPut, kGet, kCas };

// One client operation with its simulated call and return times. An operation whose outcome is
// unknown (timed out, node crashed) may have taken effect at any time after `call`, or never: its
// return is treated as infinity and its result is unconstrained.
struct Op {
  static constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

  int client = 0;
  std::string key;
  OpKind kind = OpKind::kPut;
  std::string value;                  // put: the value written; cas: the new value
  std::string expected;               // cas: the value it must find (absent is never expected)
  std::optional<std::string> output;  // get: the value read (nullopt = key absent)
  bool cas_ok = false;                // cas: whether it swapped
  bool unknown = false;               // outcome unknown
  int64_t call = 0;
  int64_t ret = kNever;
};

enum class Verdict { kLinearizable, kNotLinearizable, kUndecided };
const char* VerdictName(Verdict v);

struct CheckLimits {
  size_t max_ops_per_key = 2000;   // a longer per-key history is not searched: kUndecided
  uint64_t max_steps = 2'000'000;  // search steps per key before giving up: kUndecided
};

struct CheckResult {
  Verdict verdict = Verdict::kLinearizable;
  std::string key;     // the key that failed or was undecided
  std::string reason;  // one line, empty when linearizable
  uint64_t steps = 0;  // search steps taken over all keys
};

// Checks every key independently (a history is linearizable iff each key's sub-history is).
CheckResult CheckLinearizable(const std::vector<Op>& history, const CheckLimits& limits = {});

// One op as text, for reasons and traces: "c1 put(k0,v3) [10,20]".
std::string DescribeOp(const Op& op);

}  // namespace haven::sim
