#include "proxy/discovery.h"

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <mutex>
#include <set>

#include "base/log.h"
#include "base/metrics.h"
#include "client/health_json.h"
#include "client/watch.h"
#include "lb/balancer.h"

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

struct DiscoveryCounters {
  metrics::Counter* errors;
  metrics::Counter* switches;
};

DiscoveryCounters CountersFor(const std::string& service) {
  auto& reg = metrics::Registry::Default();
  return {&reg.GetCounter("haven_proxy_discovery_errors_total",
                          "Registry queries of proxy discovery that failed (last list kept)",
                          {{"service", service}}),
          &reg.GetCounter("haven_proxy_registry_switches_total",
                          "Times proxy discovery moved to another registry node",
                          {{"service", service}})};
}

// The last list stays in force while the registry is unreachable: stale instances are better
// than none (what Envoy does with its last EDS answer); only an answer replaces it.
void RunDiscovery(const std::shared_ptr<Discovery::Shared>& s) {
  const DiscoveryOptions& o = s->opts;
  auto urls = client::ParseRegistryUrls(o.registry);
  if (!urls.ok()) {  // validated with the options: cannot happen
    HLOG_ERROR("proxy_discovery_error", "service={} error=\"{}\"", o.service,
               urls.status().message());
    return;
  }
  DiscoveryCounters counters = CountersFor(o.service);
  client::RegistryFollower follower({*urls, o.service, o.wait_ms,
                                     std::min<int64_t>(100, o.error_backoff_ms),
                                     o.error_backoff_ms});
  std::vector<lb::Endpoint> last;
  bool delivered = false;
  while (!s->IsStopped()) {
    client::FollowStep step = follower.Poll();
    if (!step.endpoints.ok()) {
      counters.errors->Inc();
      if (step.switched) counters.switches->Inc();
      HLOG_WARN("proxy_discovery_error", "service={} registry={} error=\"{}\" kept={}", o.service,
                step.url, step.endpoints.status().message(), last.size());
    } else if (!delivered || !client::SameEndpoints(last, *step.endpoints)) {
      last = std::move(step.endpoints).value();
      delivered = true;
      HLOG_INFO("proxy_endpoints", "service={} count={} registry={}", o.service, last.size(),
                step.url);
      s->Deliver(std::make_shared<const std::vector<lb::Endpoint>>(last));
    }
    if (step.pause_ms > 0 && !s->SleepUnlessStopped(step.pause_ms)) return;
  }
}

}  // namespace

}  // namespace haven::proxy
