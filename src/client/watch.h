// Watch: one service followed by blocking queries through a registry cluster (the discovery
// cache), and the follower that moves from node to node that the proxy shares.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/status.h"
#include "lb/endpoint.h"

namespace haven::net {
class HttpClient;
}

namespace haven::client {

inline constexpr size_t kMaxRegistryUrls = 16;
inline constexpr size_t kMaxRegistryUrlBytes = 1024;

// "http://HOST:PORT" or several of them, comma-separated (the nodes of one registry cluster):
// at most kMaxRegistryUrls, each http://HOST:PORT with a port 1..65535, no duplicates.
Result<std::vector<std::string>> ParseRegistryUrls(std::string_view list);

// What one query of a RegistryFollower gave.
struct FollowStep {
  Result<std::vector<lb::Endpoint>> endpoints = Status::Unavailable("not run");
  std::string url;        // the node that answered (or failed)
  bool switched = false;  // the failure moved the watch to the next node
  int64_t pause_ms = 0;   // wait this long before the next Poll()
};

// Follows one service's passing instances with blocking queries through one node of a registry
// cluster at a time. A connect error, a 5xx (e.g. "not leader" during an election) or a query
// past its bound (a stalled node) moves it to the next node with a fresh query (index 0), which
// answers at once with the whole current list. After a whole round of nodes failed it backs off,
// doubling from min to max. It never invents an empty list: on failure the caller keeps the last
// one. Not thread-safe: one caller.
class RegistryFollower {
 public:
  struct Options {
    std::vector<std::string> urls;  // at least one (ParseRegistryUrls)
    std::string service;
    int64_t wait_ms = 60'000;
    int64_t min_backoff_ms = 100;
    int64_t max_backoff_ms = 2'000;
  };
  explicit RegistryFollower(Options opts);
  ~RegistryFollower();
  RegistryFollower(const RegistryFollower&) = delete;
  RegistryFollower& operator=(const RegistryFollower&) = delete;

  FollowStep Poll();
  const std::string& current_url() const { return opts_.urls[current_]; }

 private:
  FollowStep Fail(Status error, bool node_at_fault);
  void SwitchNode();

  Options opts_;
  size_t current_ = 0;
  std::unique_ptr<net::HttpClient> http_;
  uint64_t index_ = 0;
  size_t failures_in_row_ = 0;
  int64_t backoff_ms_;
};

// The last known passing list of one service. Shared by the watcher thread and the client, so a
// thread abandoned mid-query at shutdown never touches a destroyed client.
class WatchState {
 public:
  WatchState(std::vector<std::string> registry_urls, std::string service, int64_t wait_ms)
      : registry_urls_(std::move(registry_urls)), service_(std::move(service)), wait_ms_(wait_ms) {}

  const std::vector<std::string>& registry_urls() const { return registry_urls_; }
  const std::string& service() const { return service_; }
  int64_t wait_ms() const { return wait_ms_; }

  // Watcher side.
  void Publish(std::vector<lb::Endpoint> endpoints);  // bumps version() only on a change
  // Keeps the last known list; `answers_first`: a first AwaitFirst may return this error.
  void RecordError(Status error, bool answers_first);
  bool SleepUnlessStopped(int64_t ms);  // false once stopped
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
  const std::vector<std::string> registry_urls_;
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
