// ReplicatedLog: where the node proposes commands. A write is acknowledged only once its entry is
// durable on a quorum and applied. RaftLog implements it (a single server is a cluster of one).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "base/status.h"

namespace haven::node {

// The state machines that share the node's log; every entry is tagged with the one it is for.
enum class Machine : uint32_t { kRegistry = 0, kQueues = 1 };

class ReplicatedLog {
 public:
  // Called for every committed entry, in log order, on the node's executor.
  using CommitFn = std::function<void(uint64_t index, Machine machine, const std::string& data)>;
  // Called once per proposal on the node's executor, right after CommitFn saw its entry, or with an
  // error (IoError: the disk failed; Unavailable: shutting down) when it never will.
  using DoneFn = std::function<void(Status, uint64_t index)>;

  virtual ~ReplicatedLog() = default;
  // Thread-safe. Proposals made concurrently are batched: one fsync carries many.
  virtual void Propose(Machine machine, std::string data, DoneFn done) = 0;
};

}  // namespace haven::node
