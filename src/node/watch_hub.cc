#include "node/watch_hub.h"

#include "base/metrics.h"

namespace haven::node {

namespace {
metrics::Gauge& ParkedGauge() {
  static auto& g = metrics::Registry::Default().GetGauge(
      "haven_http_blocking_queries", "Blocking queries parked, waiting for a change");
  return g;
}
}  // namespace

void WatchHub::Park(const std::vector<registry::Table>& tables, uint64_t min_index,
                    IndexFn index_fn, int64_t wait_ms, FireFn fire) {
  uint64_t id = next_id_++;
  Waiter w{tables, min_index, std::move(index_fn), std::move(fire), nullptr};
  w.timer = executor_.RunAfter(wait_ms, [this, id] { Fire(id); });
  for (auto t : tables) by_table_[t].insert(id);
  waiters_.emplace(id, std::move(w));
  ParkedGauge().Set(static_cast<double>(waiters_.size()));
}

void WatchHub::Fire(uint64_t id) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;  // already answered
  Waiter w = std::move(it->second);
  waiters_.erase(it);
  for (auto t : w.tables) by_table_[t].erase(id);
  if (w.timer) w.timer->Cancel();
  ParkedGauge().Set(static_cast<double>(waiters_.size()));
  w.fire();
}

void WatchHub::OnTablesChanged(const std::vector<registry::Table>& changed) {
  std::set<uint64_t> candidates;
  for (auto t : changed) {
    auto it = by_table_.find(t);
    if (it != by_table_.end()) candidates.insert(it->second.begin(), it->second.end());
  }
  for (uint64_t id : candidates) {
    auto it = waiters_.find(id);
    if (it != waiters_.end() && it->second.index_fn() > it->second.min_index) Fire(id);
  }
}

void WatchHub::Shutdown() {
  while (!waiters_.empty()) Fire(waiters_.begin()->first);
}

}  // namespace haven::node
