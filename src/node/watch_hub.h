// WatchHub: parks blocking queries (?index=N&wait=D) until the index of the data they read moves
// past N, or their wait ends. Woken by the applies that change their tables: no polling.
// Used on the node's executor thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "net/io_runtime.h"
#include "registry/state_machine.h"

namespace haven::node {

class WatchHub {
 public:
  using IndexFn = std::function<uint64_t()>;
  using FireFn = std::function<void()>;

  explicit WatchHub(net::IoRuntime& executor) : executor_(executor) {}

  // Calls `fire` once: when a change to one of `tables` makes index_fn() > min_index, or after
  // wait_ms, or at Shutdown().
  void Park(const std::vector<registry::Table>& tables, uint64_t min_index, IndexFn index_fn,
            int64_t wait_ms, FireFn fire);
  void OnTablesChanged(const std::vector<registry::Table>& changed);
  // Answers every parked query now (with whatever the data is).
  void Shutdown();
  size_t parked() const { return waiters_.size(); }

 private:
  struct Waiter {
    std::vector<registry::Table> tables;
    uint64_t min_index;
    IndexFn index_fn;
    FireFn fire;
    std::shared_ptr<net::Timer> timer;
  };
  void Fire(uint64_t id);

  net::IoRuntime& executor_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Waiter> waiters_;
  std::map<registry::Table, std::set<uint64_t>> by_table_;
};

}  // namespace haven::node
