#include "proxy/discovery.h"

#include <charconv>
#include <condition_variable>
#include <mutex>
#include <set>

#include "base/log.h"
#include "client/health_json.h"
#include "lb/balancer.h"
#include "net/http_client.h"

namespace haven::proxy {

Result<lb::Endpoint> ParseHostPort(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) {
    return Status::InvalidArgument("expected HOST:PORT, got \"" + std::string(text) + "\"");
  }
  std::string_view port_text = text.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535) {
    return Status::InvalidArgument("bad port in \"" + std::string(text) + "\"");
  }
  lb::Endpoint e;
  e.id = std::string(text);
  e.host = std::string(text.substr(0, colon));
  e.port = static_cast<uint16_t>(port);
  return e;
}

Result<std::vector<lb::Endpoint>> ParseUpstreams(const std::vector<std::string>& texts) {
  if (texts.size() > lb::kMaxEndpoints) return Status::InvalidArgument("too many upstreams");
  std::vector<lb::Endpoint> out;
  std::set<std::string> seen;
  for (const std::string& t : texts) {
    auto e = ParseHostPort(t);
    if (!e.ok()) return e.status();
    if (!seen.insert(e->id).second) return Status::InvalidArgument("duplicate upstream " + t);
    out.push_back(std::move(e.value()));
  }
  return out;
}

// State the thread shares with its owner; the thread keeps it alive after Stop() abandons it.
struct Discovery::Shared {
  DiscoveryOptions opts;
  std::function<void(EndpointSnapshot)> on_change;
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false;

  bool SleepUnlessStopped(int64_t ms) {
    std::unique_lock lock(mu);
    return !cv.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopped; });
  }
  // Delivers under the lock so that after Stop() returns no callback runs.
  void Deliver(EndpointSnapshot snap) {
    std::lock_guard lock(mu);
    if (!stopped) on_change(std::move(snap));
  }
  bool IsStopped() {
    std::lock_guard lock(mu);
    return stopped;
  }
};

namespace {

void RunDiscovery(const std::shared_ptr<Discovery::Shared>& s);

}  // namespace

Discovery::Discovery(DiscoveryOptions opts, std::function<void(EndpointSnapshot)> on_change)
    : shared_(std::make_shared<Shared>()) {
  shared_->opts = std::move(opts);
  shared_->on_change = std::move(on_change);
}

Discovery::~Discovery() { Stop(); }

void Discovery::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([s = shared_] { RunDiscovery(s); });
}

void Discovery::Stop() {
  {
    std::lock_guard lock(shared_->mu);
    shared_->stopped = true;
  }
  shared_->cv.notify_all();
  // A blocking query may be parked for wait_ms; the thread owns its state and ends on its own.
  if (thread_.joinable()) thread_.detach();
}

namespace {

void RunDiscovery(const std::shared_ptr<Discovery::Shared>& s) {
  const DiscoveryOptions& o = s->opts;
  net::HttpClient client(o.registry, o.wait_ms + o.wait_ms / 16 + 5'000);
  uint64_t index = 0;
  std::vector<lb::Endpoint> last;
  bool delivered = false;
  while (!s->IsStopped()) {
    auto r = client.Request("GET", client::HealthQueryTarget(o.service, index, o.wait_ms));
    Result<std::vector<lb::Endpoint>> eps = Status::Unavailable("no answer");
    if (r.ok() && r->status == 200) {
      eps = client::ParseHealthEntries(r->body);
    } else {
      eps = r.ok() ? Status::Unavailable("HTTP " + std::to_string(r->status) + ": " + r->body)
                   : r.status();
    }
    if (!eps.ok()) {
      HLOG_WARN("proxy_discovery_error", "service={} error=\"{}\"", o.service,
                eps.status().message());
      index = 0;
      if (!s->SleepUnlessStopped(o.error_backoff_ms)) return;
      continue;
    }
    uint64_t new_index = client::ParseConsulIndex(r.value().Header("x-consul-index"));
    // An index that goes back (a registry restart) means start over, as Consul's docs advise.
    index = new_index < index ? 0 : new_index;
    // Without an index the next query would not block: pace it instead of spinning.
    if (index == 0 && !s->SleepUnlessStopped(o.error_backoff_ms)) return;
    if (delivered && client::SameEndpoints(last, eps.value())) continue;
    last = eps.value();
    delivered = true;
    HLOG_INFO("proxy_endpoints", "service={} count={} index={}", o.service, last.size(), index);
    s->Deliver(std::make_shared<const std::vector<lb::Endpoint>>(last));
  }
}

}  // namespace

}  // namespace haven::proxy
