#include "proxy/proxy_settings.h"

#include <array>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>

#include "base/duration.h"

namespace haven::proxy {
namespace {

constexpr size_t kMaxValueBytes = 4096;

Status BadValue(std::string_view key, std::string_view value, std::string_view expected) {
  std::string shown(value.substr(0, 64));
  if (value.size() > 64) shown += "...";
  return Status::InvalidArgument(std::string(key) + ": bad value \"" + shown + "\" (expected " +
                                 std::string(expected) + ")");
}

Result<int64_t> ParseInteger(std::string_view key, std::string_view value, int64_t min,
                             int64_t max) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || v < min ||
      v > max) {
    return BadValue(key, value,
                    "an integer within " + std::to_string(min) + ".." + std::to_string(max));
  }
  return v;
}

// Non-negative durations only: every duration setting is a timeout, a wait or an interval.
Result<int64_t> ParseDuration(std::string_view key, std::string_view value) {
  auto ms = ParseDurationMs(value);
  if (!ms.ok() || *ms < 0) return BadValue(key, value, "a duration such as 250ms, 5s or 1m");
  return *ms;
}

// Bytes, optionally with a binary suffix: "65536", "64KiB", "8MiB", "1GiB".
Result<int64_t> ParseSize(std::string_view key, std::string_view value) {
  struct Suffix {
    std::string_view text;
    int64_t mult;
  };
  static constexpr std::array<Suffix, 3> kSuffixes = {
      {{"KiB", int64_t{1} << 10}, {"MiB", int64_t{1} << 20}, {"GiB", int64_t{1} << 30}}};
  std::string_view digits = value;
  int64_t mult = 1;
  for (const Suffix& s : kSuffixes) {
    if (digits.ends_with(s.text)) {
      digits.remove_suffix(s.text.size());
      mult = s.mult;
      break;
    }
  }
  int64_t n = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || n < 0 ||
      n > std::numeric_limits<int64_t>::max() / mult) {
    return BadValue(key, value, "a size in bytes such as 65536, 64KiB or 8MiB");
  }
  return n * mult;
}

Result<double> ParseFraction(std::string_view key, std::string_view value) {
  double v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() ||
      !std::isfinite(v) || v < 0 || v > 1) {
    return BadValue(key, value, "a fraction within 0..1 such as 0.2");
  }
  return v;
}

Result<bool> ParseBool(std::string_view key, std::string_view value) {
  if (value == "true") return true;
  if (value == "false") return false;
  return BadValue(key, value, "true or false");
}

Result<ListenerMode> ParseMode(std::string_view key, std::string_view value) {
  if (value == "http") return ListenerMode::kHttp;
  if (value == "tcp") return ListenerMode::kTcp;
  return BadValue(key, value, "http or tcp");
}

std::string FormatSize(int64_t bytes) {
  static constexpr std::array<std::pair<int64_t, std::string_view>, 3> kUnits = {
      {{int64_t{1} << 30, "GiB"}, {int64_t{1} << 20, "MiB"}, {int64_t{1} << 10, "KiB"}}};
  for (const auto& [mult, unit] : kUnits) {
    if (bytes >= mult && bytes % mult == 0) return std::to_string(bytes / mult) + std::string(unit);
  }
  return std::to_string(bytes);
}

std::string FormatFraction(double v) {
  std::array<char, 32> buf{};
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return ec == std::errc() ? std::string(buf.data(), end) : std::string();
}

// One setting of struct T: how to parse a value into it and how to show its default.
template <typename T>
struct Row {
  SettingInfo info;
  std::function<Status(T*, std::string_view key, std::string_view value)> set;
  std::function<std::string(const T&)> get;
};

// Field accessors are generic lambdas `[](auto& o) -> auto& { return o.field; }` so that one
// accessor serves both the setter (T&) and the default formatter (const T&).

template <typename T, typename F>
Row<T> Text(std::string_view name, std::string_view help, F field, std::string_view kind = "TEXT") {
  return {{name, help, false, kind},
          [field](T* o, std::string_view, std::string_view v) {
            field(*o) = std::string(v);
            return Status::Ok();
          },
          [field](const T& o) { return std::string(field(o)); }};
}

template <typename T, typename F>
Row<T> Integer(std::string_view name, std::string_view help, F field) {
  using V = std::remove_cvref_t<decltype(field(std::declval<T&>()))>;
  return {{name, help, false, "INT"},
          [field](T* o, std::string_view key, std::string_view v) {
            // The range is ValidateProxyOptions's job; this only keeps the value representable.
            auto n = ParseInteger(key, v, 0,
                                  static_cast<int64_t>(std::min<uint64_t>(
                                      std::numeric_limits<V>::max(),
                                      static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))));
            if (!n.ok()) return n.status();
            field(*o) = static_cast<V>(*n);
            return Status::Ok();
          },
          [field](const T& o) { return std::to_string(field(o)); }};
}

template <typename T, typename F>
Row<T> Duration(std::string_view name, std::string_view help, F field) {
  return {{name, help, false, "DURATION"},
          [field](T* o, std::string_view key, std::string_view v) {
            auto ms = ParseDuration(key, v);
            if (!ms.ok()) return ms.status();
            field(*o) = *ms;
            return Status::Ok();
          },
          [field](const T& o) { return FormatDurationMs(field(o)); }};
}

template <typename T, typename F>
Row<T> Size(std::string_view name, std::string_view help, F field) {
  return {{name, help, false, "SIZE"},
          [field](T* o, std::string_view key, std::string_view v) {
            auto n = ParseSize(key, v);
            if (!n.ok()) return n.status();
            field(*o) = static_cast<size_t>(*n);
            return Status::Ok();
          },
          [field](const T& o) { return FormatSize(static_cast<int64_t>(field(o))); }};
}

template <typename T, typename F>
Row<T> Fraction(std::string_view name, std::string_view help, F field) {
  return {{name, help, false, "FRACTION"},
          [field](T* o, std::string_view key, std::string_view v) {
            auto f = ParseFraction(key, v);
            if (!f.ok()) return f.status();
            field(*o) = *f;
            return Status::Ok();
          },
          [field](const T& o) { return FormatFraction(field(o)); }};
}

template <typename T, typename F>
Row<T> Bool(std::string_view name, std::string_view help, F field) {
  return {{name, help, false, "BOOL"},
          [field](T* o, std::string_view key, std::string_view v) {
            auto b = ParseBool(key, v);
            if (!b.ok()) return b.status();
            field(*o) = *b;
            return Status::Ok();
          },
          [field](const T& o) { return std::string(field(o) ? "true" : "false"); }};
}

const std::vector<Row<ProxyOptions>>& ProxyRows() {
  using P = ProxyOptions;
  static const std::vector<Row<P>> rows = {
      Integer<P>(
          "threads", "Worker threads, 0..256 (0: one per core)",
          [](auto& o) -> auto& { return o.threads; }),
      Text<P>(
          "admin", "Admin address HOST:PORT for /metrics and /status (empty: none)",
          [](auto& o) -> auto& { return o.admin; }, "HOST:PORT"),
      Size<P>(
          "max-body", "Largest buffered client request body, 1B..1GiB (413 above)",
          [](auto& o) -> auto& { return o.max_body_bytes; }),
      Size<P>(
          "max-header-bytes", "Largest client request head, 1KiB..1MiB (431 above)",
          [](auto& o) -> auto& { return o.max_header_bytes; }),
      Duration<P>(
          "header-timeout", "Time to read one whole client request, 1ms..1h",
          [](auto& o) -> auto& { return o.header_timeout_ms; }),
      Duration<P>(
          "idle-timeout", "Idle keep-alive client connection (tcp: idle connection), 1ms..24h",
          [](auto& o) -> auto& { return o.idle_timeout_ms; }),
      Integer<P>(
          "max-connections", "Client connections at once, 1..10000000",
          [](auto& o) -> auto& { return o.max_client_connections; }),
      Duration<P>(
          "drain-timeout", "SIGTERM: time for in-flight requests to finish, 0..1h",
          [](auto& o) -> auto& { return o.drain_timeout_ms; }),
      Duration<P>(
          "watch-wait", "Registry clusters: blocking query wait, 1ms..10m",
          [](auto& o) -> auto& { return o.watch_wait_ms; }),
  };
  return rows;
}

Row<ClusterOptions> UpstreamRow() {
  return {{"upstream", "Static upstream HOST:PORT (repeat for several)", true, "HOST:PORT"},
          [](ClusterOptions* c, std::string_view key, std::string_view v) {
            if (c->upstreams.size() >= lb::kMaxEndpoints) {
              return Status::InvalidArgument(std::string(key) + ": more than " +
                                             std::to_string(lb::kMaxEndpoints) + " upstreams");
            }
            c->upstreams.emplace_back(v);
            return Status::Ok();
          },
          [](const ClusterOptions&) { return std::string(); }};
}

Row<ClusterOptions> PolicyRow() {
  return {{"lb", "Balancing: round_robin|least_request|ewma|ring_hash|random", false, "POLICY"},
          [](ClusterOptions* c, std::string_view key, std::string_view v) {
            auto p = lb::ParsePolicy(v);
            if (!p.ok()) {
              return BadValue(key, v, "round_robin, least_request, ewma, ring_hash or random");
            }
            c->policy = *p;
            return Status::Ok();
          },
          [](const ClusterOptions& c) { return std::string(lb::PolicyName(c.policy)); }};
}

const std::vector<Row<ClusterOptions>>& ClusterRows() {
  using C = ClusterOptions;
  static const std::vector<Row<C>> rows = {
      Text<C>(
          "name", "Cluster name that routes refer to: [A-Za-z0-9._-], <= 128 bytes",
          [](auto& c) -> auto& { return c.name; }),
      UpstreamRow(),
      Text<C>(
          "service", "Follow this service's passing instances in the registry",
          [](auto& c) -> auto& { return c.service; }),
      Text<C>(
          "registry",
          "Registry for service: http://HOST:PORT, or every node of a cluster comma-separated "
          "(<= 16; discovery moves to the next node when one fails)",
          [](auto& c) -> auto& { return c.registry; }, "URL"),
      PolicyRow(),
      Text<C>(
          "hash-header", "ring_hash key: this request header (default: the client address)",
          [](auto& c) -> auto& { return c.hash_header; }),
      Duration<C>(
          "per-try-timeout", "Timeout of one upstream attempt, 1ms..1h",
          [](auto& c) -> auto& { return c.retry.per_try_timeout_ms; }),
      Duration<C>(
          "timeout", "Overall timeout of one client request, 1ms..1h",
          [](auto& c) -> auto& { return c.retry.overall_timeout_ms; }),
      Integer<C>(
          "try-timeout-multiplier",
          "Retryable requests: per-try timeout = this x recent p99 (0: per-try-timeout), 0..100",
          [](auto& c) -> auto& { return c.try_timeout.multiplier; }),
      Duration<C>(
          "try-timeout-floor", "Adaptive per-try timeout at least this, 1ms..1h",
          [](auto& c) -> auto& { return c.try_timeout.floor_ms; }),
      Integer<C>(
          "max-attempts", "Upstream attempts per request at most, 1..10",
          [](auto& c) -> auto& { return c.retry.max_attempts; }),
      Duration<C>(
          "backoff-base", "Wait-based retry: first backoff (jittered, doubles), 0..10m",
          [](auto& c) -> auto& { return c.retry.backoff_base_ms; }),
      Duration<C>(
          "backoff-max", "Wait-based retry: largest backoff, backoff-base..10m",
          [](auto& c) -> auto& { return c.retry.backoff_max_ms; }),
      Fraction<C>(
          "retry-budget", "Retries at most this fraction of requests, 0..1",
          [](auto& c) -> auto& { return c.retry.budget_ratio; }),
      Integer<C>(
          "max-pending", "Requests in flight per instance and worker, 1..1000000 (503 above)",
          [](auto& c) -> auto& { return c.circuit.max_pending; }),
      Integer<C>(
          "max-connections-per-instance",
          "Upstream connections per instance and worker, 1..1000000",
          [](auto& c) -> auto& { return c.circuit.max_connections; }),
      Duration<C>(
          "connect-timeout", "Upstream connect timeout (also per-try bound), 1ms..1h",
          [](auto& c) -> auto& { return c.connect_timeout_ms; }),
      Integer<C>(
          "max-idle-per-instance",
          "Pooled keep-alive upstream connections per instance and worker, 0..100000",
          [](auto& c) -> auto& { return c.max_idle_per_endpoint; }),
      Integer<C>(
          "outlier-failures", "Failures in a row that eject an instance, 1..1000000",
          [](auto& c) -> auto& { return c.outlier.consecutive_failures; }),
      Integer<C>(
          "outlier-connect-failures",
          "Refused/reset connections in a row that eject an instance, 1..1000000",
          [](auto& c) -> auto& { return c.outlier.consecutive_connect_failures; }),
      Duration<C>(
          "outlier-ejection", "First ejection time (doubles each time), 1ms..24h",
          [](auto& c) -> auto& { return c.outlier.base_ejection_ms; }),
      Duration<C>(
          "outlier-max-ejection", "Longest ejection, outlier-ejection..24h",
          [](auto& c) -> auto& { return c.outlier.max_ejection_ms; }),
      Fraction<C>(
          "outlier-max-ejected", "Share of instances ejected at once at most, 0..1",
          [](auto& c) -> auto& { return c.outlier.max_ejected_fraction; }),
      Duration<C>(
          "probe-interval",
          "Probe instances ejected for connect errors or timeouts this often (0: off), 0..1h",
          [](auto& c) -> auto& { return c.probe_interval_ms; }),
      Duration<C>(
          "probe-timeout", "Timeout of one probe of an ejected instance, 1ms..1h",
          [](auto& c) -> auto& { return c.probe_timeout_ms; }),
      Text<C>(
          "health-path", "Active health checks (static upstreams): GET this path",
          [](auto& c) -> auto& { return c.health.path; }),
      Duration<C>(
          "health-interval", "Time between health checks of one upstream, 100ms..1h",
          [](auto& c) -> auto& { return c.health.interval_ms; }),
      Duration<C>(
          "health-timeout", "Timeout of one health check, 1ms..1h",
          [](auto& c) -> auto& { return c.health.timeout_ms; }),
      Integer<C>(
          "unhealthy-threshold", "Failed checks in a row that take an upstream out, 1..100",
          [](auto& c) -> auto& { return c.health.unhealthy_threshold; }),
      Integer<C>(
          "healthy-threshold", "Passed checks in a row that bring it back, 1..100",
          [](auto& c) -> auto& { return c.health.healthy_threshold; }),
  };
  return rows;
}

const std::vector<Row<ListenerOptions>>& ListenerRows() {
  using L = ListenerOptions;
  static const std::vector<Row<L>> rows = {
      Text<L>(
          "listen", "Client address IP:PORT (port 0: ephemeral)",
          [](auto& l) -> auto& { return l.listen; }, "HOST:PORT"),
      {{"mode", "http (routes by host and path) or tcp (one cluster, bytes as they are)", false,
        "MODE"},
       [](L* l, std::string_view key, std::string_view v) {
         auto m = ParseMode(key, v);
         if (!m.ok()) return m.status();
         l->mode = *m;
         return Status::Ok();
       },
       [](const L& l) { return std::string(l.mode == ListenerMode::kTcp ? "tcp" : "http"); }},
  };
  return rows;
}

const std::vector<Row<RouteOptions>>& RouteRows() {
  using R = RouteOptions;
  static const std::vector<Row<R>> rows = {
      Text<R>(
          "host", "Host header to match, without port, case-insensitive (empty: any)",
          [](auto& r) -> auto& { return r.host; }),
      Text<R>(
          "path", "Path prefix to match, starting with /",
          [](auto& r) -> auto& { return r.path_prefix; }),
      Text<R>(
          "cluster", "The cluster that takes matching requests",
          [](auto& r) -> auto& { return r.cluster; }),
      Bool<R>(
          "retry-non-idempotent", "Retry POST/PATCH too, even after bytes reached an instance",
          [](auto& r) -> auto& { return r.retry_non_idempotent; }),
  };
  return rows;
}

template <typename T>
const Row<T>* FindRow(const std::vector<Row<T>>& rows, std::string_view key) {
  for (const Row<T>& r : rows) {
    if (r.info.name == key) return &r;
  }
  return nullptr;
}

template <typename T>
Status SetFromTable(const std::vector<Row<T>>& rows, SettingScope scope, T* target,
                    std::string_view key, std::string_view value) {
  const Row<T>* row = FindRow(rows, key);
  if (row == nullptr) {
    std::string shown(key.substr(0, 64));
    return Status::InvalidArgument("unknown " + std::string(ScopeName(scope)) + " setting \"" +
                                   shown + "\"; known: " + SettingNames(scope));
  }
  if (value.size() > kMaxValueBytes) {
    return Status::InvalidArgument(std::string(key) + ": value longer than " +
                                   std::to_string(kMaxValueBytes) + " bytes");
  }
  return row->set(target, key, value);
}

template <typename T>
std::vector<SettingInfo> InfosOf(const std::vector<Row<T>>& rows) {
  std::vector<SettingInfo> out;
  out.reserve(rows.size());
  for (const Row<T>& r : rows) out.push_back(r.info);
  return out;
}

template <typename T>
std::string DefaultOf(const std::vector<Row<T>>& rows, std::string_view key) {
  const Row<T>* row = FindRow(rows, key);
  return row == nullptr ? std::string() : row->get(T{});
}

}  // namespace

Status SetProxySetting(ProxyOptions* opts, std::string_view key, std::string_view value) {
  return SetFromTable(ProxyRows(), SettingScope::kProxy, opts, key, value);
}

Status SetClusterSetting(ClusterOptions* cluster, std::string_view key, std::string_view value) {
  return SetFromTable(ClusterRows(), SettingScope::kCluster, cluster, key, value);
}

Status SetListenerSetting(ListenerOptions* listener, std::string_view key, std::string_view value) {
  return SetFromTable(ListenerRows(), SettingScope::kListener, listener, key, value);
}

Status SetRouteSetting(RouteOptions* route, std::string_view key, std::string_view value) {
  return SetFromTable(RouteRows(), SettingScope::kRoute, route, key, value);
}

const std::vector<SettingInfo>& SettingsOf(SettingScope scope) {
  static const std::vector<SettingInfo> proxy = InfosOf(ProxyRows());
  static const std::vector<SettingInfo> cluster = InfosOf(ClusterRows());
  static const std::vector<SettingInfo> listener = InfosOf(ListenerRows());
  static const std::vector<SettingInfo> route = InfosOf(RouteRows());
  switch (scope) {
    case SettingScope::kProxy:
      return proxy;
    case SettingScope::kCluster:
      return cluster;
    case SettingScope::kListener:
      return listener;
    case SettingScope::kRoute:
      break;
  }
  return route;
}

std::string SettingNames(SettingScope scope) {
  std::string out;
  for (const SettingInfo& s : SettingsOf(scope)) {
    if (!out.empty()) out += ", ";
    out += s.name;
  }
  return out;
}

bool IsSetting(SettingScope scope, std::string_view key) {
  for (const SettingInfo& s : SettingsOf(scope)) {
    if (s.name == key) return true;
  }
  return false;
}

std::string DefaultSettingText(SettingScope scope, std::string_view key) {
  switch (scope) {
    case SettingScope::kProxy:
      return DefaultOf(ProxyRows(), key);
    case SettingScope::kCluster:
      return DefaultOf(ClusterRows(), key);
    case SettingScope::kListener:
      return DefaultOf(ListenerRows(), key);
    case SettingScope::kRoute:
      break;
  }
  return DefaultOf(RouteRows(), key);
}

std::string_view ScopeName(SettingScope scope) {
  switch (scope) {
    case SettingScope::kProxy:
      return "proxy";
    case SettingScope::kCluster:
      return "cluster";
    case SettingScope::kListener:
      return "listener";
    case SettingScope::kRoute:
      break;
  }
  return "route";
}

}  // namespace haven::proxy
