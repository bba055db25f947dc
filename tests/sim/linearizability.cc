#include "linearizability.h"

#include <algorithm>
#include <map>
#include <unordered_set>

namespace haven::sim {
namespace {

// A key's sub-history, prepared for search: ops sorted by call time, values interned so the
// register's state is a small integer (-1 = absent).
struct KeyHistory {
  struct Entry {
    const Op* op;
    int value = -1;     // put/cas: the value written
    int expected = -1;  // cas: the value it needs
    int output = -1;    // get: the value read
    bool must = true;   // known outcome: must be linearized
  };
  std::vector<Entry> ops;
};

// The register's transition: returns false when `e` cannot happen in `state`.
bool Step(const KeyHistory::Entry& e, int state, int* next) {
  switch (e.op->kind) {
    case OpKind::kPut:
      *next = e.value;
      return true;
    case OpKind::kGet:
      *next = state;
      return e.output == state;
    case OpKind::kCas:
      if (e.op->unknown || e.op->cas_ok) {
        *next = e.value;
        return state == e.expected;
      }
      *next = state;
      return state != e.expected;
  }
  return false;
}

KeyHistory Prepare(const std::vector<const Op*>& ops) {
  std::map<std::string, int> ids;
  auto intern = [&ids](const std::string& v) {
    return ids.emplace(v, static_cast<int>(ids.size())).first->second;
  };
  KeyHistory h;
  for (const Op* op : ops) {
    // A get whose answer never arrived constrains nothing.
    if (op->kind == OpKind::kGet && op->unknown) continue;
    KeyHistory::Entry e{op};
    e.must = !op->unknown;
    if (op->kind != OpKind::kGet) e.value = intern(op->value);
    if (op->kind == OpKind::kCas) e.expected = intern(op->expected);
    if (op->kind == OpKind::kGet && op->output) e.output = intern(*op->output);
    h.ops.push_back(e);
  }
  std::stable_sort(h.ops.begin(), h.ops.end(),
                   [](const auto& a, const auto& b) { return a.op->call < b.op->call; });
  return h;
}

int64_t ReturnTime(const KeyHistory::Entry& e) { return e.must ? e.op->ret : Op::kNever; }

// A get that reads a value no put or cas ever wrote can never be explained: say so directly.
std::optional<std::string> FindReadOfUnwritten(const std::vector<const Op*>& ops) {
  std::unordered_set<std::string> written;
  for (const Op* op : ops) {
    if (op->kind != OpKind::kGet) written.insert(op->value);
  }
  for (const Op* op : ops) {
    if (op->kind == OpKind::kGet && !op->unknown && op->output && !written.count(*op->output)) {
      return "read of a value never written: " + DescribeOp(*op);
    }
  }
  return std::nullopt;
}

// Depth-first search over linearization orders with memoization of (linearized set, state).
class Search {
 public:
  Search(const KeyHistory& h, uint64_t max_steps)
      : h_(h), max_steps_(max_steps), done_(h.ops.size(), false) {
    for (const auto& e : h.ops) must_left_ += e.must ? 1 : 0;
  }

  Verdict Run() {
    size_t cursor = 0;
    int64_t min_ret = MinReturn();
    while (must_left_ > 0) {
      if (++steps_ > max_steps_) return Verdict::kUndecided;
      size_t pick = NextCandidate(cursor, min_ret);
      if (pick < h_.ops.size()) {
        int next = 0;
        if (Step(h_.ops[pick], state_, &next) && Visit(pick, next)) {
          stack_.push_back({pick, state_});
          Mark(pick, true);
          state_ = next;
          min_ret = MinReturn();
          cursor = 0;
        } else {
          cursor = pick + 1;
        }
        continue;
      }
      if (stack_.size() > deepest_ || culprit_ == nullptr) {
        deepest_ = stack_.size();
        culprit_ = FirstPending();
      }
      if (stack_.empty()) return Verdict::kNotLinearizable;
      auto [op, prev] = stack_.back();
      stack_.pop_back();
      Mark(op, false);
      state_ = prev;
      min_ret = MinReturn();
      cursor = op + 1;
    }
    return Verdict::kLinearizable;
  }

  uint64_t steps() const { return steps_; }
  // The known op that returned first among those never linearized at the deepest point reached:
  // the usual culprit.
  const Op* culprit() const { return culprit_; }

 private:
  struct Frame {
    size_t op;
    int prev_state;
  };

  // The first op at or after `cursor` not yet linearized that was called before every pending
  // op returned (ops are sorted by call, so the scan stops at the first later call).
  size_t NextCandidate(size_t cursor, int64_t min_ret) const {
    for (size_t i = cursor; i < h_.ops.size(); ++i) {
      if (h_.ops[i].op->call > min_ret) break;
      if (!done_[i]) return i;
    }
    return h_.ops.size();
  }

  int64_t MinReturn() const {
    int64_t m = Op::kNever;
    for (size_t i = 0; i < h_.ops.size(); ++i) {
      if (!done_[i]) m = std::min(m, ReturnTime(h_.ops[i]));
    }
    return m;
  }

  void Mark(size_t i, bool on) {
    done_[i] = on;
    if (h_.ops[i].must) must_left_ += on ? -1 : 1;
  }

  const Op* FirstPending() const {
    const Op* best = nullptr;
    for (size_t i = 0; i < h_.ops.size(); ++i) {
      if (done_[i] || !h_.ops[i].must) continue;
      if (!best || h_.ops[i].op->ret < best->ret) best = h_.ops[i].op;
    }
    return best;
  }

  // Records (done + {pick}, next); false when that configuration was already explored.
  bool Visit(size_t pick, int next) {
    std::string key((h_.ops.size() + 7) / 8 + sizeof(int), '\0');
    for (size_t i = 0; i < h_.ops.size(); ++i) {
      if (done_[i] || i == pick) key[i / 8] = static_cast<char>(key[i / 8] | (1 << (i % 8)));
    }
    std::copy_n(reinterpret_cast<const char*>(&next), sizeof(int),
                key.begin() + static_cast<long>((h_.ops.size() + 7) / 8));
    return seen_.insert(std::move(key)).second;
  }

  const KeyHistory& h_;
  uint64_t max_steps_;
  uint64_t steps_ = 0;
  std::vector<bool> done_;
  std::vector<Frame> stack_;
  std::unordered_set<std::string> seen_;
  int state_ = -1;
  long must_left_ = 0;
  size_t deepest_ = 0;
  const Op* culprit_ = nullptr;
};

}  // namespace

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kLinearizable:
      return "linearizable";
    case Verdict::kNotLinearizable:
      return "not linearizable";
    case Verdict::kUndecided:
      return "undecided";
  }
  return "?";
}

std::string DescribeOp(const Op& op) {
  std::string s = "c" + std::to_string(op.client) + " ";
  switch (op.kind) {
    case OpKind::kPut:
      s += "put(" + op.key + "," + op.value + ")";
      break;
    case OpKind::kGet:
      s += "get(" + op.key + ")";
      if (!op.unknown) s += "->" + (op.output ? *op.output : std::string("absent"));
      break;
    case OpKind::kCas:
      s += "cas(" + op.key + "," + op.expected + "," + op.value + ")";
      if (!op.unknown) s += op.cas_ok ? "->ok" : "->fail";
      break;
  }
  s += " [" + std::to_string(op.call) + ",";
  s += op.unknown ? std::string("?") : std::to_string(op.ret);
  return s + "]";
}

CheckResult CheckLinearizable(const std::vector<Op>& history, const CheckLimits& limits) {
  std::map<std::string, std::vector<const Op*>> by_key;
  for (const Op& op : history) by_key[op.key].push_back(&op);

  CheckResult result;
  for (const auto& [key, ops] : by_key) {
    if (auto bad = FindReadOfUnwritten(ops)) {
      return {Verdict::kNotLinearizable, key, "key " + key + ": " + *bad, result.steps};
    }
    if (ops.size() > limits.max_ops_per_key) {
      result.verdict = Verdict::kUndecided;
      result.key = key;
      result.reason = "key " + key + ": " + std::to_string(ops.size()) + " ops, over the limit";
      continue;
    }
    KeyHistory h = Prepare(ops);
    Search search(h, limits.max_steps);
    Verdict v = search.Run();
    result.steps += search.steps();
    if (v == Verdict::kNotLinearizable) {
      std::string why =
          "key " + key + ": no linearization of " + std::to_string(ops.size()) + " ops";
      if (search.culprit()) why += "; stuck at " + DescribeOp(*search.culprit());
      return {v, key, why, result.steps};
    }
    if (v == Verdict::kUndecided) {
      result.verdict = v;
      result.key = key;
      result.reason = "key " + key + ": search budget exhausted";
    }
  }
  return result;
}

}  // namespace haven::sim
