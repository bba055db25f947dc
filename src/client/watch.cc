#include "client/watch.h"

#include <algorithm>
#include <charconv>
#include <chrono>

#include "base/log.h"
#include "client/health_json.h"
#include "net/http_client.h"

namespace haven::client {
namespace {

// After a failed query the watcher waits this long, doubling up to the max (bounded back-off).
constexpr int64_t kMinBackoffMs = 100;
constexpr int64_t kMaxBackoffMs = 2000;
// Slack on top of the blocking wait: the registry may add up to wait/16 of jitter.
constexpr int64_t kQuerySlackMs = 5000;

Result<std::vector<lb::Endpoint>> QueryOnce(net::HttpClient& http, const WatchState& w,
                                            uint64_t* index) {
  auto r = http.Request("GET", client::HealthQueryTarget(w.service(), *index, w.wait_ms()));
  if (!r.ok()) return r.status();
  if (r->status != 200) {
    return Status::Unavailable("registry answered " + std::to_string(r->status) + " for service " +
                               w.service());
  }
  auto eps = ParseHealthEntries(r->body);
  if (!eps.ok()) return eps;
  uint64_t next = client::ParseConsulIndex(r.value().Header("x-consul-index"));
  // An index that goes back (a registry restart) means start over, as Consul's docs advise.
  *index = next < *index ? 0 : next;
  return eps;
}

void RunWatch(std::shared_ptr<WatchState> w) {
  net::HttpClient http(w->registry(), w->wait_ms() + w->wait_ms() / 16 + kQuerySlackMs);
  uint64_t index = 0;
  int64_t backoff = kMinBackoffMs;
  while (!w->stopped()) {
    auto eps = QueryOnce(http, *w, &index);
    if (w->stopped()) break;
    if (!eps.ok()) {
      w->RecordError(eps.status());
      index = 0;
      if (!w->SleepUnlessStopped(backoff)) break;
      backoff = std::min(backoff * 2, kMaxBackoffMs);
      continue;
    }
    backoff = kMinBackoffMs;
    w->Publish(std::move(eps).value());
    // Without an index the next query would not block: pace it instead of spinning.
    if (index == 0 && !w->SleepUnlessStopped(kMinBackoffMs)) break;
  }
  w->MarkDone();
}

}  // namespace

void WatchState::Publish(std::vector<lb::Endpoint> endpoints) {
  std::lock_guard lock(mu_);
  bool changed = !have_list_ || !client::SameEndpoints(endpoints, endpoints_);
  if (changed) {
    HLOG_INFO("client_endpoints", "service={} count={}", service_, endpoints.size());
    endpoints_ = std::move(endpoints);
    ++version_;
  }
  have_list_ = true;
  answered_ = true;
  last_error_ = Status::Ok();
  cv_.notify_all();
}

void WatchState::RecordError(Status error) {
  std::lock_guard lock(mu_);
  if (last_error_.ok()) {
    HLOG_WARN("client_watch_error", "service={} error=\"{}\"", service_, error.message());
  }
  last_error_ = std::move(error);
  answered_ = true;
  cv_.notify_all();
}

bool WatchState::SleepUnlessStopped(int64_t ms) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stop_; });
}

bool WatchState::stopped() {
  std::lock_guard lock(mu_);
  return stop_;
}

void WatchState::MarkDone() {
  std::lock_guard lock(mu_);
  done_ = true;
  cv_.notify_all();
}

Result<std::vector<lb::Endpoint>> WatchState::AwaitFirst(int64_t timeout_ms) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return answered_ || stop_; });
  if (have_list_) return endpoints_;
  if (!last_error_.ok()) {
    return Status::Unavailable("registry query for service " + service_ +
                               " failed: " + last_error_.message());
  }
  return Status::Unavailable("no answer from the registry for service " + service_ + " within " +
                             std::to_string(timeout_ms) + " ms");
}

bool WatchState::CopyIfNewer(uint64_t* version, std::vector<lb::Endpoint>* out) {
  std::lock_guard lock(mu_);
  if (*version == version_) return false;
  *version = version_;
  *out = endpoints_;
  return true;
}

void WatchState::RequestStop() {
  std::lock_guard lock(mu_);
  stop_ = true;
  cv_.notify_all();
}

bool WatchState::AwaitDone(int64_t timeout_ms) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return done_; });
}

std::thread StartWatch(std::shared_ptr<WatchState> state) {
  return std::thread([state = std::move(state)]() mutable { RunWatch(std::move(state)); });
}

}  // namespace haven::client
