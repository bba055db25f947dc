#include "proxy/proxy_options.h"

#include <arpa/inet.h>

#include <array>
#include <charconv>
#include <set>
#include <utility>

#include "client/watch.h"
#include "proxy/discovery.h"

namespace haven::proxy {
namespace {

constexpr size_t kMaxHostBytes = 255;
constexpr size_t kMaxPathBytes = 1024;
constexpr size_t kMaxHashHeaderBytes = 256;
constexpr size_t kMaxRegistryListBytes =
    client::kMaxRegistryUrls * (client::kMaxRegistryUrlBytes + 1);
constexpr int64_t kMaxWatchWaitMs = int64_t{10} * 60 * 1000;
constexpr size_t kMaxIdlePerEndpoint = 100'000;
constexpr int kMaxCircuitLimit = 1'000'000;

Status Invalid(const std::string& where, const std::string& what) {
  return Status::InvalidArgument(where + ": " + what);
}

std::string ClusterWhere(const ClusterOptions& c) { return "cluster \"" + c.name + "\""; }

std::string ListenerWhere(size_t index, const ListenerOptions& l) {
  return "listener " + std::to_string(index + 1) + " (" + l.listen + ")";
}

bool IsIpAddress(const std::string& host) {
  std::array<unsigned char, sizeof(in6_addr)> buf{};
  return inet_pton(AF_INET, host.c_str(), buf.data()) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buf.data()) == 1;
}

bool IsNameChar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '.' || ch == '_' || ch == '-';
}

Status ValidateName(const std::string& name) {
  if (name.empty()) return Status::InvalidArgument("a cluster needs a name");
  if (name.size() > kMaxNameBytes) {
    return Status::InvalidArgument("cluster name \"" + name.substr(0, 32) +
                                   "...\" is longer than " + std::to_string(kMaxNameBytes) +
                                   " bytes");
  }
  for (char ch : name) {
    if (!IsNameChar(ch)) {
      return Status::InvalidArgument("cluster name \"" + name +
                                     "\" may only hold A-Z a-z 0-9 . _ -");
    }
  }
  return Status::Ok();
}

// A Host header value without port: no whitespace, slashes or control bytes.
bool IsSaneHost(const std::string& host) {
  if (host.size() > kMaxHostBytes) return false;
  for (unsigned char ch : host) {
    if (ch <= ' ' || ch == '/' || ch == '\\' || ch == 0x7f) return false;
  }
  return true;
}

bool IsSanePath(const std::string& path) {
  if (path.empty() || path[0] != '/' || path.size() > kMaxPathBytes) return false;
  for (unsigned char ch : path) {
    if (ch <= ' ' || ch == 0x7f) return false;
  }
  return true;
}

Status ValidateSource(const ClusterOptions& c) {
  std::string where = ClusterWhere(c);
  bool static_mode = !c.upstreams.empty();
  bool registry_mode = !c.service.empty() || !c.registry.empty();
  if (static_mode == registry_mode) {
    return Invalid(where, "give either --upstream (one or more) or --service with --registry");
  }
  if (registry_mode && (c.service.empty() || c.registry.empty())) {
    return Invalid(where, "--service and --registry go together");
  }
  if (registry_mode && c.registry.size() > kMaxRegistryListBytes) {
    return Invalid(where,
                   "--registry is longer than " + std::to_string(kMaxRegistryListBytes) + " bytes");
  }
  if (registry_mode) {
    if (auto urls = client::ParseRegistryUrls(c.registry); !urls.ok()) {
      return Invalid(where, "--" + urls.status().message());
    }
  }
  if (registry_mode && c.service.size() > kMaxNameBytes) {
    return Invalid(where, "--service is longer than " + std::to_string(kMaxNameBytes) + " bytes");
  }
  if (static_mode) {
    if (c.upstreams.size() > lb::kMaxEndpoints) {
      return Invalid(where, "more than " + std::to_string(lb::kMaxEndpoints) + " upstreams");
    }
    if (auto eps = ParseUpstreams(c.upstreams); !eps.ok()) {
      return Invalid(where, "--upstream: " + eps.status().message());
    }
  }
  return Status::Ok();
}

// The lb layer owns the retry and outlier ranges; to name the flag at fault, each field is tried
// alone on top of the defaults. A field that fails alone is the culprit; otherwise the first
// entry (the struct's name) is given.
template <typename Opts>
struct FieldProbe {
  const char* flag;
  void (*copy)(const Opts& from, Opts* to);
};

template <typename Opts, size_t N>
std::string CulpritOf(const Opts& actual, Status (*validate)(const Opts&),
                      const std::array<FieldProbe<Opts>, N>& fields) {
  for (size_t i = 1; i < N; ++i) {
    Opts probe{};
    fields[i].copy(actual, &probe);
    if (!validate(probe).ok()) return fields[i].flag;
  }
  return fields[0].flag;
}

constexpr std::array<FieldProbe<lb::RetryOptions>, 7> kRetryFields = {{
    {"retry", [](const lb::RetryOptions&, lb::RetryOptions*) {}},
    {"--max-attempts",
     [](const lb::RetryOptions& f, lb::RetryOptions* t) { t->max_attempts = f.max_attempts; }},
    {"--per-try-timeout",
     [](const lb::RetryOptions& f, lb::RetryOptions* t) {
       t->per_try_timeout_ms = f.per_try_timeout_ms;
     }},
    {"--timeout", [](const lb::RetryOptions& f,
                     lb::RetryOptions* t) { t->overall_timeout_ms = f.overall_timeout_ms; }},
    {"--backoff-base", [](const lb::RetryOptions& f,
                          lb::RetryOptions* t) { t->backoff_base_ms = f.backoff_base_ms; }},
    {"--backoff-max",
     [](const lb::RetryOptions& f, lb::RetryOptions* t) { t->backoff_max_ms = f.backoff_max_ms; }},
    {"--retry-budget",
     [](const lb::RetryOptions& f, lb::RetryOptions* t) { t->budget_ratio = f.budget_ratio; }},
}};

constexpr std::array<FieldProbe<lb::OutlierOptions>, 6> kOutlierFields = {{
    {"outlier", [](const lb::OutlierOptions&, lb::OutlierOptions*) {}},
    {"--outlier-connect-failures",
     [](const lb::OutlierOptions& f, lb::OutlierOptions* t) {
       t->consecutive_connect_failures = f.consecutive_connect_failures;
     }},
    {"--outlier-failures",
     [](const lb::OutlierOptions& f, lb::OutlierOptions* t) {
       t->consecutive_failures = f.consecutive_failures;
     }},
    {"--outlier-ejection", [](const lb::OutlierOptions& f,
                              lb::OutlierOptions* t) { t->base_ejection_ms = f.base_ejection_ms; }},
    {"--outlier-max-ejection",
     [](const lb::OutlierOptions& f, lb::OutlierOptions* t) {
       t->max_ejection_ms = f.max_ejection_ms;
     }},
    {"--outlier-max-ejected",
     [](const lb::OutlierOptions& f, lb::OutlierOptions* t) {
       t->max_ejected_fraction = f.max_ejected_fraction;
     }},
}};

Status ValidateBalancing(const ClusterOptions& c) {
  std::string where = ClusterWhere(c);
  if (c.hash_header.size() > kMaxHashHeaderBytes)
    return Invalid(where, "--hash-header is too long");
  if (!c.hash_header.empty() && c.policy != lb::Policy::kRingHash) {
    return Invalid(where, "--hash-header needs --lb ring_hash");
  }
  if (Status s = lb::ValidateRetryOptions(c.retry); !s.ok()) {
    return Invalid(where,
                   CulpritOf(c.retry, lb::ValidateRetryOptions, kRetryFields) + ": " + s.message());
  }
  if (Status s = lb::ValidateOutlierOptions(c.outlier); !s.ok()) {
    return Invalid(where, CulpritOf(c.outlier, lb::ValidateOutlierOptions, kOutlierFields) + ": " +
                              s.message());
  }
  if (c.try_timeout.multiplier < 0 || c.try_timeout.multiplier > 100) {
    return Invalid(where, "--try-timeout-multiplier must be within 0..100");
  }
  if (c.try_timeout.floor_ms < 1 || c.try_timeout.floor_ms > kMaxHealthMs) {
    return Invalid(where, "--try-timeout-floor must be within 1ms..1h");
  }
  if (c.probe_interval_ms < 0 || c.probe_interval_ms > kMaxHealthMs) {
    return Invalid(where, "--probe-interval must be within 0..1h");
  }
  if (c.probe_timeout_ms < 1 || c.probe_timeout_ms > kMaxHealthMs) {
    return Invalid(where, "--probe-timeout must be within 1ms..1h");
  }
  if (c.circuit.max_pending < 1 || c.circuit.max_pending > kMaxCircuitLimit) {
    return Invalid(where, "--max-pending must be within 1..1000000");
  }
  if (c.circuit.max_connections < 1 || c.circuit.max_connections > kMaxCircuitLimit) {
    return Invalid(where, "--max-connections-per-instance must be within 1..1000000");
  }
  if (c.connect_timeout_ms < 1 || c.connect_timeout_ms > kMaxHealthMs) {
    return Invalid(where, "--connect-timeout must be within 1ms..1h");
  }
  if (c.max_idle_per_endpoint > kMaxIdlePerEndpoint) {
    return Invalid(where, "--max-idle-per-instance must be within 0..100000");
  }
  return Status::Ok();
}

Status ValidateHealth(const ClusterOptions& c) {
  std::string where = ClusterWhere(c);
  const HealthCheckOptions& h = c.health;
  if (!h.path.empty()) {
    if (c.upstreams.empty()) {
      return Invalid(where,
                     "--health-path is for static --upstream clusters; the registry health-checks "
                     "--service");
    }
    if (!IsSanePath(h.path)) return Invalid(where, "--health-path must be a path starting with /");
  }
  if (h.interval_ms < kMinHealthIntervalMs || h.interval_ms > kMaxHealthMs) {
    return Invalid(where, "--health-interval must be within 100ms..1h");
  }
  if (h.timeout_ms < 1 || h.timeout_ms > kMaxHealthMs) {
    return Invalid(where, "--health-timeout must be within 1ms..1h");
  }
  if (h.unhealthy_threshold < 1 || h.unhealthy_threshold > kMaxHealthThreshold ||
      h.healthy_threshold < 1 || h.healthy_threshold > kMaxHealthThreshold) {
    return Invalid(where, "--unhealthy-threshold and --healthy-threshold must be within 1..100");
  }
  return Status::Ok();
}

Status ValidateCluster(const ClusterOptions& c) {
  if (Status s = ValidateName(c.name); !s.ok()) return s;
  if (Status s = ValidateSource(c); !s.ok()) return s;
  if (Status s = ValidateBalancing(c); !s.ok()) return s;
  return ValidateHealth(c);
}

Status ValidateClusters(const ProxyOptions& o) {
  if (o.clusters.empty()) return Status::InvalidArgument("no cluster given");
  if (o.clusters.size() > kMaxClusters) {
    return Status::InvalidArgument("more than " + std::to_string(kMaxClusters) + " clusters");
  }
  std::set<std::string_view> names;
  for (const ClusterOptions& c : o.clusters) {
    if (Status s = ValidateCluster(c); !s.ok()) return s;
    if (!names.insert(c.name).second) {
      return Status::InvalidArgument("cluster \"" + c.name + "\" is defined twice");
    }
  }
  return Status::Ok();
}

Status ValidateRoute(const ProxyOptions& o, const std::string& where, const RouteOptions& r) {
  if (!IsSaneHost(r.host)) {
    return Invalid(where, "host \"" + r.host.substr(0, 64) +
                              "\" must be a host name without port, spaces or slashes (<= 255 "
                              "bytes)");
  }
  if (!IsSanePath(r.path_prefix)) {
    return Invalid(where, "path \"" + r.path_prefix.substr(0, 64) +
                              "\" must be a prefix starting with / (<= 1024 bytes, no spaces)");
  }
  if (r.cluster.empty()) return Invalid(where, "names no cluster");
  if (FindCluster(o, r.cluster) == nullptr) {
    return Invalid(where, "unknown cluster \"" + r.cluster.substr(0, kMaxNameBytes) + "\"");
  }
  return Status::Ok();
}

Status ValidateListener(const ProxyOptions& o, size_t index, const ListenerOptions& l) {
  std::string where = ListenerWhere(index, l);
  auto at = ParseListen(l.listen);
  if (!at.ok()) return Invalid(where, "--listen: " + at.status().message());
  if (!IsIpAddress(at->host)) {
    return Invalid(where, "--listen needs an IP address, got \"" + at->host + "\"");
  }
  if (l.routes.empty()) return Invalid(where, "has no route (give a cluster)");
  if (l.routes.size() > kMaxRoutesPerListener) {
    return Invalid(where, "more than " + std::to_string(kMaxRoutesPerListener) + " routes");
  }
  if (l.mode == ListenerMode::kTcp && l.routes.size() != 1) {
    return Invalid(where, "a tcp listener takes exactly one route (one cluster)");
  }
  for (size_t i = 0; i < l.routes.size(); ++i) {
    std::string route_where = where + " route " + std::to_string(i + 1);
    if (Status s = ValidateRoute(o, route_where, l.routes[i]); !s.ok()) return s;
  }
  return Status::Ok();
}

Status ValidateListeners(const ProxyOptions& o) {
  if (o.listeners.empty()) return Status::InvalidArgument("no listener given");
  if (o.listeners.size() > kMaxListeners) {
    return Status::InvalidArgument("more than " + std::to_string(kMaxListeners) + " listeners");
  }
  std::set<std::pair<std::string, uint16_t>> addresses;
  for (size_t i = 0; i < o.listeners.size(); ++i) {
    const ListenerOptions& l = o.listeners[i];
    if (Status s = ValidateListener(o, i, l); !s.ok()) return s;
    auto at = ParseListen(l.listen);
    // Port 0 asks for a fresh ephemeral port each time, so two of them do not collide.
    if (at->port != 0 && !addresses.emplace(at->host, at->port).second) {
      return Status::InvalidArgument("listen address " + l.listen + " is used twice");
    }
  }
  return Status::Ok();
}

Status ValidateGlobalLimits(const ProxyOptions& o) {
  if (!o.admin.empty()) {
    if (auto a = ParseListen(o.admin); !a.ok() || a->host.empty()) {
      return Status::InvalidArgument(
          "--admin: " + (a.ok() ? std::string("expected HOST:PORT") : a.status().message()));
    }
  }
  if (o.threads < 0 || o.threads > kMaxThreads) {
    return Status::InvalidArgument("--threads must be within 0.." + std::to_string(kMaxThreads));
  }
  if (o.max_body_bytes == 0 || o.max_body_bytes > (size_t{1} << 30)) {
    return Status::InvalidArgument("--max-body must be within 1 byte..1GiB");
  }
  if (o.max_header_bytes < 1024 || o.max_header_bytes > (size_t{1} << 20)) {
    return Status::InvalidArgument("--max-header-bytes must be within 1KiB..1MiB");
  }
  if (o.header_timeout_ms <= 0 || o.header_timeout_ms > kMaxHealthMs) {
    return Status::InvalidArgument("--header-timeout must be within 1ms..1h");
  }
  if (o.idle_timeout_ms <= 0 || o.idle_timeout_ms > kMaxHealthMs * 24) {
    return Status::InvalidArgument("--idle-timeout must be within 1ms..24h");
  }
  if (o.drain_timeout_ms < 0 || o.drain_timeout_ms > kMaxHealthMs) {
    return Status::InvalidArgument("--drain-timeout must be within 0..1h");
  }
  if (o.watch_wait_ms <= 0 || o.watch_wait_ms > kMaxWatchWaitMs) {
    return Status::InvalidArgument("--watch-wait must be within 1ms..10m");
  }
  if (o.max_client_connections == 0 || o.max_client_connections > 10'000'000) {
    return Status::InvalidArgument("--max-connections must be within 1..10000000");
  }
  return Status::Ok();
}

}  // namespace

Result<HostPort> ParseListen(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return Status::InvalidArgument("expected HOST:PORT, got \"" + std::string(text) + "\"");
  }
  std::string_view port_text = text.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port > 65535) {
    return Status::InvalidArgument("bad port in \"" + std::string(text) + "\"");
  }
  std::string_view host = text.substr(0, colon);
  // "[::1]:80": the brackets only separate an IPv6 address from the port.
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return HostPort{std::string(host), static_cast<uint16_t>(port)};
}

Status ValidateProxyOptions(const ProxyOptions& opts) {
  if (Status s = ValidateGlobalLimits(opts); !s.ok()) return s;
  if (Status s = ValidateClusters(opts); !s.ok()) return s;
  return ValidateListeners(opts);
}

const ClusterOptions* FindCluster(const ProxyOptions& opts, std::string_view name) {
  for (const ClusterOptions& c : opts.clusters) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

}  // namespace haven::proxy
