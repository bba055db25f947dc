// Watch: one service followed by blocking queries on a thread of its own (the discovery cache).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"
#include "lb/endpoint.h"

namespace haven::client {

// The last known passing list of one service. Shared by the watcher thread and the client, so a
// thread abandoned mid-query at shutdown never touches a destroyed client.
class WatchState {
 public:
  WatchState(std::string registry, std::string service, int64_t wait_ms)
      : registry_(std::move(registry)), service_(std::move(service)), wait_ms_(wait_ms) {}

  const std::string& registry() const { return registry_; }
  const std::string& service() const { return service_; }
  int64_t wait_ms() const { return wait_ms_; }

  // Watcher side.
  void Publish(std::vector<lb::Endpoint> endpoints);  // bumps version() only on a change
  void RecordError(Status error);                     // keeps the last known list
  bool SleepUnlessStopped(int64_t ms);                // false once stopped
  bool stopped();
  void MarkDone();

  // Client side. Waits up to `timeout_ms` for the first query to finish; then the list, or the
  // registry's error when no list ever arrived.
  Result<std::vector<lb::Endpoint>> AwaitFirst(int64_t timeout_ms);
  // Copies the list into `out` when it changed since `*version`; returns whether it did.
  bool CopyIfNewer(uint64_t* version, std::vector<lb::Endpoint>* out);
  void RequestStop();
  // Waits until the watcher thread finished, up to `timeout_ms`; returns whether it did.
  bool AwaitDone(int64_t timeout_ms);

 private:
  const std::string registry_;
  const std::string service_;
  const int64_t wait_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool done_ = false;
  bool have_list_ = false;
  bool answered_ = false;  // the first query finished, with a list or an error
  uint64_t version_ = 0;
  std::vector<lb::Endpoint> endpoints_;
  Status last_error_;
};

// Starts the watcher thread for `state`. Stop it with state->RequestStop(), then join it (or
// detach it when AwaitDone times out: a blocking query may be in flight).
std::thread StartWatch(std::shared_ptr<WatchState> state);

}  // namespace haven::client
