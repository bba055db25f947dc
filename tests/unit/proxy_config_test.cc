// The proxy's options module: the settings table shared by flags and file, the YAML config file,
// and ValidateProxyOptions's rules.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "client/watch.h"
#include "proxy/config_file.h"
#include "proxy/proxy_options.h"
#include "proxy/proxy_settings.h"

namespace haven::proxy {
namespace {

using ::testing::HasSubstr;

std::string ErrorOf(const Status& s) { return s.ok() ? "<ok>" : s.message(); }
template <typename T>
std::string ErrorOf(const Result<T>& r) {
  return r.ok() ? "<ok>" : r.status().message();
}

// A valid two-cluster, one-listener configuration that each validation test breaks in one place.
ProxyOptions ValidOptions() {
  ProxyOptions o;
  ClusterOptions web;
  web.name = "web";
  web.upstreams = {"127.0.0.1:9001", "127.0.0.1:9002"};
  ClusterOptions users;
  users.name = "users";
  users.service = "users";
  users.registry = "http://127.0.0.1:8500";
  o.clusters = {web, users};
  ListenerOptions l;
  l.listen = "127.0.0.1:0";
  RouteOptions r1;
  r1.host = "api.example.com";
  r1.path_prefix = "/users";
  r1.cluster = "users";
  RouteOptions r2;
  r2.cluster = "web";
  l.routes = {r1, r2};
  o.listeners = {l};
  return o;
}

// ---- settings table ----

TEST(ProxySettingsTest, ProxyKeysSetTheirFields) {
  ProxyOptions o;
  ASSERT_TRUE(SetProxySetting(&o, "threads", "4").ok());
  ASSERT_TRUE(SetProxySetting(&o, "admin", "127.0.0.1:9901").ok());
  ASSERT_TRUE(SetProxySetting(&o, "max-body", "1MiB").ok());
  ASSERT_TRUE(SetProxySetting(&o, "max-header-bytes", "32KiB").ok());
  ASSERT_TRUE(SetProxySetting(&o, "header-timeout", "3s").ok());
  ASSERT_TRUE(SetProxySetting(&o, "idle-timeout", "1m").ok());
  ASSERT_TRUE(SetProxySetting(&o, "max-connections", "500").ok());
  ASSERT_TRUE(SetProxySetting(&o, "drain-timeout", "0").ok());
  ASSERT_TRUE(SetProxySetting(&o, "watch-wait", "30s").ok());
  EXPECT_EQ(o.threads, 4);
  EXPECT_EQ(o.admin, "127.0.0.1:9901");
  EXPECT_EQ(o.max_body_bytes, size_t{1} << 20);
  EXPECT_EQ(o.max_header_bytes, size_t{32} << 10);
  EXPECT_EQ(o.header_timeout_ms, 3000);
  EXPECT_EQ(o.idle_timeout_ms, 60'000);
  EXPECT_EQ(o.max_client_connections, 500u);
  EXPECT_EQ(o.drain_timeout_ms, 0);
  EXPECT_EQ(o.watch_wait_ms, 30'000);
}

TEST(ProxySettingsTest, ClusterKeysSetTheirFields) {
  ClusterOptions c;
  const std::vector<std::pair<const char*, const char*>> settings = {
      {"name", "users"},
      {"upstream", "127.0.0.1:1"},
      {"upstream", "127.0.0.1:2"},
      {"service", "users"},
      {"registry", "http://127.0.0.1:8500"},
      {"lb", "ring_hash"},
      {"hash-header", "X-User"},
      {"per-try-timeout", "250ms"},
      {"timeout", "2s"},
      {"max-attempts", "4"},
      {"backoff-base", "10ms"},
      {"backoff-max", "1s"},
      {"retry-budget", "0.5"},
      {"max-pending", "7"},
      {"max-connections-per-instance", "8"},
      {"connect-timeout", "100ms"},
      {"max-idle-per-instance", "9"},
      {"outlier-failures", "3"},
      {"outlier-ejection", "10s"},
      {"outlier-max-ejection", "1m"},
      {"outlier-max-ejected", "0.25"},
      {"health-path", "/healthz"},
      {"health-interval", "2s"},
      {"health-timeout", "500ms"},
      {"unhealthy-threshold", "5"},
      {"healthy-threshold", "6"},
      {"try-timeout-multiplier", "4"},
      {"try-timeout-floor", "30ms"},
      {"outlier-connect-failures", "2"},
      {"probe-interval", "20ms"},
      {"probe-timeout", "300ms"},
  };
  for (const auto& [key, value] : settings) {
    ASSERT_TRUE(SetClusterSetting(&c, key, value).ok()) << key;
  }
  EXPECT_EQ(c.name, "users");
  EXPECT_EQ(c.upstreams, (std::vector<std::string>{"127.0.0.1:1", "127.0.0.1:2"}));
  EXPECT_EQ(c.service, "users");
  EXPECT_EQ(c.registry, "http://127.0.0.1:8500");
  EXPECT_EQ(c.policy, lb::Policy::kRingHash);
  EXPECT_EQ(c.hash_header, "X-User");
  EXPECT_EQ(c.retry.per_try_timeout_ms, 250);
  EXPECT_EQ(c.retry.overall_timeout_ms, 2000);
  EXPECT_EQ(c.retry.max_attempts, 4);
  EXPECT_EQ(c.retry.backoff_base_ms, 10);
  EXPECT_EQ(c.retry.backoff_max_ms, 1000);
  EXPECT_DOUBLE_EQ(c.retry.budget_ratio, 0.5);
  EXPECT_EQ(c.circuit.max_pending, 7);
  EXPECT_EQ(c.circuit.max_connections, 8);
  EXPECT_EQ(c.connect_timeout_ms, 100);
  EXPECT_EQ(c.max_idle_per_endpoint, 9u);
  EXPECT_EQ(c.outlier.consecutive_failures, 3);
  EXPECT_EQ(c.outlier.base_ejection_ms, 10'000);
  EXPECT_EQ(c.outlier.max_ejection_ms, 60'000);
  EXPECT_DOUBLE_EQ(c.outlier.max_ejected_fraction, 0.25);
  EXPECT_EQ(c.health.path, "/healthz");
  EXPECT_EQ(c.health.interval_ms, 2000);
  EXPECT_EQ(c.health.timeout_ms, 500);
  EXPECT_EQ(c.health.unhealthy_threshold, 5);
  EXPECT_EQ(c.health.healthy_threshold, 6);
  EXPECT_EQ(c.try_timeout.multiplier, 4);
  EXPECT_EQ(c.try_timeout.floor_ms, 30);
  EXPECT_EQ(c.outlier.consecutive_connect_failures, 2);
  EXPECT_EQ(c.probe_interval_ms, 20);
  EXPECT_EQ(c.probe_timeout_ms, 300);
  // Every key of the table is exercised above.
  EXPECT_EQ(SettingsOf(SettingScope::kCluster).size(), settings.size() - 1);
}

TEST(ProxySettingsTest, ListenerAndRouteKeysSetTheirFields) {
  ListenerOptions l;
  ASSERT_TRUE(SetListenerSetting(&l, "listen", "0.0.0.0:80").ok());
  ASSERT_TRUE(SetListenerSetting(&l, "mode", "tcp").ok());
  EXPECT_EQ(l.listen, "0.0.0.0:80");
  EXPECT_EQ(l.mode, ListenerMode::kTcp);
  RouteOptions r;
  ASSERT_TRUE(SetRouteSetting(&r, "host", "api.example.com").ok());
  ASSERT_TRUE(SetRouteSetting(&r, "path", "/v1").ok());
  ASSERT_TRUE(SetRouteSetting(&r, "cluster", "api").ok());
  ASSERT_TRUE(SetRouteSetting(&r, "retry-non-idempotent", "true").ok());
  EXPECT_EQ(r.host, "api.example.com");
  EXPECT_EQ(r.path_prefix, "/v1");
  EXPECT_EQ(r.cluster, "api");
  EXPECT_TRUE(r.retry_non_idempotent);
}

TEST(ProxySettingsTest, BadValuesAreRejectedNamingTheKey) {
  ProxyOptions o;
  ClusterOptions c;
  ListenerOptions l;
  RouteOptions r;
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "threads", "many")), HasSubstr("threads"));
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "threads", "-1")), HasSubstr("threads"));
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "threads", "99999999999")), HasSubstr("threads"));
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "max-body", "8XB")), HasSubstr("max-body"));
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "max-body", "99999999999GiB")), HasSubstr("max-body"));
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "header-timeout", "10 parsecs")),
              HasSubstr("header-timeout"));
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "drain-timeout", "-5s")), HasSubstr("drain-timeout"));
  EXPECT_THAT(ErrorOf(SetClusterSetting(&c, "lb", "fastest")), HasSubstr("lb"));
  EXPECT_THAT(ErrorOf(SetClusterSetting(&c, "retry-budget", "1.5")), HasSubstr("retry-budget"));
  EXPECT_THAT(ErrorOf(SetClusterSetting(&c, "retry-budget", "nan")), HasSubstr("retry-budget"));
  EXPECT_THAT(ErrorOf(SetClusterSetting(&c, "max-attempts", "3.5")), HasSubstr("max-attempts"));
  EXPECT_THAT(ErrorOf(SetListenerSetting(&l, "mode", "udp")), HasSubstr("mode"));
  EXPECT_THAT(ErrorOf(SetRouteSetting(&r, "retry-non-idempotent", "yes")),
              HasSubstr("retry-non-idempotent"));
  EXPECT_THAT(ErrorOf(SetClusterSetting(&c, "service", std::string(5000, 'x'))),
              HasSubstr("service"));
}

TEST(ProxySettingsTest, UnknownKeysListTheKnownOnes) {
  ClusterOptions c;
  std::string msg = ErrorOf(SetClusterSetting(&c, "lbb", "ewma"));
  EXPECT_THAT(msg, HasSubstr("unknown cluster setting \"lbb\""));
  EXPECT_THAT(msg, HasSubstr("per-try-timeout"));
  ProxyOptions o;
  EXPECT_THAT(ErrorOf(SetProxySetting(&o, "listen", "1.2.3.4:5")),
              HasSubstr("unknown proxy setting"));
  EXPECT_TRUE(IsSetting(SettingScope::kRoute, "retry-non-idempotent"));
  EXPECT_FALSE(IsSetting(SettingScope::kRoute, "lb"));
}

TEST(ProxySettingsTest, DefaultsComeFromTheStructs) {
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "per-try-timeout"), "5s");
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "lb"), "least_request");
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "retry-budget"), "0.2");
  EXPECT_EQ(DefaultSettingText(SettingScope::kProxy, "max-body"), "8MiB");
  EXPECT_EQ(DefaultSettingText(SettingScope::kListener, "mode"), "http");
  EXPECT_EQ(DefaultSettingText(SettingScope::kRoute, "path"), "/");
  EXPECT_EQ(DefaultSettingText(SettingScope::kRoute, "nonsense"), "");
  // Every default, typed back in, gives the default again.
  for (const SettingInfo& s : SettingsOf(SettingScope::kCluster)) {
    std::string text = DefaultSettingText(SettingScope::kCluster, s.name);
    if (text.empty()) continue;
    ClusterOptions c;
    ASSERT_TRUE(SetClusterSetting(&c, s.name, text).ok()) << s.name << "=" << text;
    EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, s.name), text);
  }
  for (const SettingInfo& s : SettingsOf(SettingScope::kProxy)) {
    std::string text = DefaultSettingText(SettingScope::kProxy, s.name);
    ProxyOptions o;
    if (!text.empty()) {
      EXPECT_TRUE(SetProxySetting(&o, s.name, text).ok()) << s.name;
    }
  }
}

// ---- YAML config ----

constexpr const char* kExample = R"(threads: 2
admin: 127.0.0.1:9901
listeners:
  - listen: 127.0.0.1:8080
    routes:
      - host: api.example.com
        path: /users
        cluster: users
        retry-non-idempotent: true
      - path: /
        cluster: web
  - listen: 127.0.0.1:6000
    mode: tcp
    cluster: db          # shorthand for one catch-all route
clusters:
  - name: users
    service: users
    registry: http://127.0.0.1:8500
    lb: ewma
    per-try-timeout: 500ms
  - name: web
    upstream: [127.0.0.1:9001, 127.0.0.1:9002]
    health-path: /healthz
  - name: db
    upstream: 127.0.0.1:5432
)";

TEST(ProxyConfigTest, ExampleParsesIntoTheExpectedStructs) {
  auto parsed = ParseProxyConfig(kExample);
  ASSERT_TRUE(parsed.ok()) << ErrorOf(parsed);
  const ProxyOptions& o = *parsed;
  EXPECT_EQ(o.threads, 2);
  EXPECT_EQ(o.admin, "127.0.0.1:9901");
  ASSERT_EQ(o.listeners.size(), 2u);
  const ListenerOptions& http = o.listeners[0];
  EXPECT_EQ(http.listen, "127.0.0.1:8080");
  EXPECT_EQ(http.mode, ListenerMode::kHttp);
  ASSERT_EQ(http.routes.size(), 2u);
  EXPECT_EQ(http.routes[0].host, "api.example.com");
  EXPECT_EQ(http.routes[0].path_prefix, "/users");
  EXPECT_EQ(http.routes[0].cluster, "users");
  EXPECT_TRUE(http.routes[0].retry_non_idempotent);
  EXPECT_EQ(http.routes[1].host, "");
  EXPECT_EQ(http.routes[1].path_prefix, "/");
  EXPECT_EQ(http.routes[1].cluster, "web");
  EXPECT_FALSE(http.routes[1].retry_non_idempotent);
  const ListenerOptions& tcp = o.listeners[1];
  EXPECT_EQ(tcp.mode, ListenerMode::kTcp);
  ASSERT_EQ(tcp.routes.size(), 1u);
  EXPECT_EQ(tcp.routes[0].cluster, "db");
  EXPECT_EQ(tcp.routes[0].path_prefix, "/");
  ASSERT_EQ(o.clusters.size(), 3u);
  const ClusterOptions* users = FindCluster(o, "users");
  ASSERT_NE(users, nullptr);
  EXPECT_EQ(users->service, "users");
  EXPECT_EQ(users->registry, "http://127.0.0.1:8500");
  EXPECT_EQ(users->policy, lb::Policy::kEwma);
  EXPECT_EQ(users->retry.per_try_timeout_ms, 500);
  EXPECT_EQ(users->retry.overall_timeout_ms, lb::RetryOptions{}.overall_timeout_ms);
  const ClusterOptions* web = FindCluster(o, "web");
  ASSERT_NE(web, nullptr);
  EXPECT_EQ(web->upstreams, (std::vector<std::string>{"127.0.0.1:9001", "127.0.0.1:9002"}));
  EXPECT_EQ(web->health.path, "/healthz");
  EXPECT_EQ(FindCluster(o, "db")->upstreams, std::vector<std::string>{"127.0.0.1:5432"});
  EXPECT_EQ(FindCluster(o, "nope"), nullptr);
}

TEST(ProxyConfigTest, ErrorsCarryLineNumbers) {
  std::string bad_key = kExample;
  bad_key.replace(bad_key.find("lb: ewma"), 8, "lbb: ewma");
  EXPECT_THAT(ErrorOf(ParseProxyConfig(bad_key)),
              HasSubstr("line 19: unknown cluster setting \"lbb\""));

  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: 2\nlisteners:\n  - listen: {a: 1}\n")),
              HasSubstr("line 3: \"listen\" takes a single value, not a map"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: 2\nbogus: 1\n")),
              HasSubstr("line 2: unknown setting \"bogus\""));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: 2\nclusters: web\n")),
              HasSubstr("line 2: \"clusters\" must be a list"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: [1\nadmin: x\n")),
              HasSubstr("line 2: YAML syntax error"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: 2\n  admin: : :\n\t- x")), HasSubstr("line "));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: two\n")),
              HasSubstr("line 1: threads: bad value \"two\""));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("threads: 1\nthreads: 2\n")), HasSubstr("twice"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("")), HasSubstr("empty"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("- a\n- b\n")), HasSubstr("must be a map"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("listeners:\n  - listen: 127.0.0.1:1\n")),
              HasSubstr("line 2: a listener needs routes or a cluster"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("listeners:\n  - cluster: a\n    routes: []\n")),
              HasSubstr("either routes or cluster"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("clusters:\n  - name: a\n    upstream: [[1]]\n")),
              HasSubstr("line 3: each upstream"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig("clusters:\n  - name:\n")), HasSubstr("needs a value"));
}

TEST(ProxyConfigTest, ParsedOptionsAreValidated) {
  std::string unknown = kExample;
  unknown.replace(unknown.find("cluster: db"), 11, "cluster: dbx");
  EXPECT_THAT(ErrorOf(ParseProxyConfig(unknown)), HasSubstr("unknown cluster \"dbx\""));
}

TEST(ProxyConfigTest, FilesAreReadWithLimits) {
  std::string path = ::testing::TempDir() + "/proxy_config_test.yaml";
  {
    std::ofstream f(path);
    f << kExample;
  }
  auto loaded = LoadProxyConfig(path);
  ASSERT_TRUE(loaded.ok()) << ErrorOf(loaded);
  EXPECT_EQ(loaded->listeners.size(), 2u);
  {
    std::ofstream f(path);
    f << "threads: 2\nlbb: 1\n";
  }
  EXPECT_THAT(ErrorOf(LoadProxyConfig(path)), HasSubstr(path + ":2: unknown setting \"lbb\""));
  {
    std::ofstream f(path);
    f << "# padding\n" << std::string(kMaxConfigFileBytes, '#') << "\n";
  }
  EXPECT_THAT(ErrorOf(LoadProxyConfig(path)), HasSubstr("larger than 1 MiB"));
  std::remove(path.c_str());
  EXPECT_THAT(ErrorOf(LoadProxyConfig(path)), HasSubstr("cannot open config file"));
  EXPECT_THAT(ErrorOf(LoadProxyConfig(::testing::TempDir())), HasSubstr("config file"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig(std::string(kMaxConfigFileBytes + 1, ' '))),
              HasSubstr("larger than"));
}

TEST(ProxyConfigTest, TheDocumentedExampleLoads) {
  auto loaded = LoadProxyConfig(std::string(HAVEN_SOURCE_DIR) + "/docs/examples/proxy.yaml");
  ASSERT_TRUE(loaded.ok()) << ErrorOf(loaded);
  EXPECT_EQ(loaded->listeners.size(), 2u);
  EXPECT_EQ(loaded->clusters.size(), 3u);
}

// ---- validation ----

TEST(ProxyValidateTest, TheBaselineIsValid) {
  EXPECT_TRUE(ValidateProxyOptions(ValidOptions()).ok())
      << ErrorOf(ValidateProxyOptions(ValidOptions()));
}

// Breaks ValidOptions() with `edit` and expects a message containing `expected`.
void ExpectInvalid(const std::function<void(ProxyOptions&)>& edit, const std::string& expected) {
  ProxyOptions o = ValidOptions();
  edit(o);
  Status s = ValidateProxyOptions(o);
  EXPECT_FALSE(s.ok()) << "expected: " << expected;
  EXPECT_THAT(ErrorOf(s), HasSubstr(expected));
}

TEST(ProxyValidateTest, Clusters) {
  ExpectInvalid([](ProxyOptions& o) { o.clusters.clear(); }, "no cluster");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].name = "web"; }, "\"web\" is defined twice");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].name = ""; }, "needs a name");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].name = "we b"; }, "may only hold");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].name = std::string(kMaxNameBytes + 1, 'a'); },
                "longer than");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].service = "x"; },
                "cluster \"web\": give either --upstream");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].upstreams.clear(); }, "give either");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].registry.clear(); }, "go together");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].registry = "https://x:1"; }, "http://");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].upstreams.emplace_back("127.0.0.1:9001"); },
                "--upstream");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].upstreams.emplace_back("nonsense"); },
                "--upstream");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].hash_header = "X-User"; }, "ring_hash");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].retry.per_try_timeout_ms = 0; },
                "cluster \"users\": --per-try-timeout: ");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].retry.max_attempts = 11; }, "--max-attempts");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].outlier.max_ejected_fraction = 2; },
                "--outlier-max-ejected");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].retry.backoff_base_ms = 1000; },
                "--backoff-base");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].outlier.max_ejection_ms = 1000; },
                "--outlier-max-ejection");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].circuit.max_pending = 0; }, "--max-pending");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].connect_timeout_ms = 0; }, "--connect-timeout");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].max_idle_per_endpoint = 1'000'000; },
                "--max-idle-per-instance");
  ProxyOptions ring = ValidOptions();
  ring.clusters[0].hash_header = "X-User";
  ring.clusters[0].policy = lb::Policy::kRingHash;
  EXPECT_TRUE(ValidateProxyOptions(ring).ok());
}

// Issue 7's settings: adaptive per-try timeout, connect-failure ejection, probes of ejected
// instances. Defaults give the fast failover out of the box; each has a validated range.
TEST(ProxyValidateTest, FailureTransitionSettings) {
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "try-timeout-multiplier"), "3");
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "try-timeout-floor"), "25ms");
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "outlier-connect-failures"), "1");
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "probe-interval"), "50ms");
  EXPECT_EQ(DefaultSettingText(SettingScope::kCluster, "probe-timeout"), "1s");
  ClusterOptions c;
  ASSERT_TRUE(SetClusterSetting(&c, "try-timeout-multiplier", "0").ok());
  EXPECT_EQ(c.try_timeout.multiplier, 0);
  ASSERT_TRUE(SetClusterSetting(&c, "probe-interval", "0").ok());
  EXPECT_EQ(c.probe_interval_ms, 0);
  ASSERT_TRUE(SetClusterSetting(&c, "outlier-connect-failures", "3").ok());
  EXPECT_EQ(c.outlier.consecutive_connect_failures, 3);
  EXPECT_THAT(ErrorOf(SetClusterSetting(&c, "try-timeout-floor", "soon")),
              HasSubstr("try-timeout-floor"));
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].try_timeout.multiplier = 101; },
                "--try-timeout-multiplier");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].try_timeout.floor_ms = 0; },
                "--try-timeout-floor");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].outlier.consecutive_connect_failures = 0; },
                "--outlier-connect-failures");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].probe_interval_ms = -1; }, "--probe-interval");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].probe_timeout_ms = 0; }, "--probe-timeout");
}

TEST(ProxyValidateTest, HealthChecks) {
  ProxyOptions ok = ValidOptions();
  ok.clusters[0].health.path = "/healthz";
  EXPECT_TRUE(ValidateProxyOptions(ok).ok());
  ExpectInvalid([](ProxyOptions& o) { o.clusters[1].health.path = "/healthz"; },
                "cluster \"users\": --health-path is for static");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].health.path = "healthz"; }, "starting with /");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].health.path = "/a b"; }, "starting with /");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].health.interval_ms = 99; },
                "--health-interval");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].health.timeout_ms = 0; }, "--health-timeout");
  ExpectInvalid([](ProxyOptions& o) { o.clusters[0].health.healthy_threshold = 101; }, "threshold");
}

TEST(ProxyValidateTest, ListenersAndRoutes) {
  ExpectInvalid([](ProxyOptions& o) { o.listeners.clear(); }, "no listener");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].listen = "nonsense"; }, "--listen");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].listen = "localhost:80"; }, "IP address");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes.clear(); }, "has no route");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes[1].cluster = "nope"; },
                "route 2: unknown cluster \"nope\"");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes[1].cluster = ""; }, "names no cluster");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes[0].path_prefix = "users"; },
                "starting with /");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes[0].host = "a b"; }, "host");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes[0].host = "a/b"; }, "host");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].routes[0].host = std::string(256, 'a'); },
                "host");
  ExpectInvalid([](ProxyOptions& o) { o.listeners[0].mode = ListenerMode::kTcp; },
                "exactly one route");
  ExpectInvalid(
      [](ProxyOptions& o) {
        o.listeners[0].listen = "127.0.0.1:8080";
        o.listeners.push_back(o.listeners[0]);
      },
      "used twice");
  ExpectInvalid([](ProxyOptions& o) { o.listeners.resize(kMaxListeners + 1, o.listeners[0]); },
                "listeners");
  ProxyOptions ephemeral = ValidOptions();
  ephemeral.listeners.push_back(ephemeral.listeners[0]);
  EXPECT_TRUE(ValidateProxyOptions(ephemeral).ok()) << "port 0 twice is two ports";
  ProxyOptions v6 = ValidOptions();
  v6.listeners[0].listen = "[::1]:8080";
  EXPECT_TRUE(ValidateProxyOptions(v6).ok()) << ErrorOf(ValidateProxyOptions(v6));
}

TEST(ProxyValidateTest, GlobalLimits) {
  ExpectInvalid([](ProxyOptions& o) { o.threads = kMaxThreads + 1; }, "--threads");
  ExpectInvalid([](ProxyOptions& o) { o.admin = "nonsense"; }, "--admin");
  ExpectInvalid([](ProxyOptions& o) { o.max_body_bytes = 0; }, "--max-body");
  ExpectInvalid([](ProxyOptions& o) { o.max_header_bytes = 10; }, "--max-header-bytes");
  ExpectInvalid([](ProxyOptions& o) { o.header_timeout_ms = 0; }, "--header-timeout");
  ExpectInvalid([](ProxyOptions& o) { o.idle_timeout_ms = 0; }, "--idle-timeout");
  ExpectInvalid([](ProxyOptions& o) { o.drain_timeout_ms = -1; }, "--drain-timeout");
  ExpectInvalid([](ProxyOptions& o) { o.watch_wait_ms = int64_t{11} * 60 * 1000; }, "--watch-wait");
  ExpectInvalid([](ProxyOptions& o) { o.max_client_connections = 0; }, "--max-connections");
}

TEST(ProxyValidateTest, ParseListen) {
  auto hp = ParseListen("127.0.0.1:80");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 80);
  auto v6 = ParseListen("[::1]:0");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  for (const char* bad : {"", "host", "h:", "h:65536", "h:8o", "h:-1"}) {
    EXPECT_FALSE(ParseListen(bad).ok()) << bad;
  }
}

// ---- registry cluster: several URLs ----

std::string Urls(int n, int first_port = 8500) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    out += (i ? "," : "") + std::string("http://127.0.0.1:") + std::to_string(first_port + i);
  }
  return out;
}

TEST(ProxyRegistryListTest, ParsesEveryUrlInOrder) {
  auto one = client::ParseRegistryUrls("http://127.0.0.1:8500");
  ASSERT_TRUE(one.ok()) << ErrorOf(one);
  EXPECT_EQ(*one, std::vector<std::string>{"http://127.0.0.1:8500"});
  auto three =
      client::ParseRegistryUrls(" http://a.example:1, http://127.0.0.1:2/ ,http://[::1]:3");
  ASSERT_TRUE(three.ok()) << ErrorOf(three);
  EXPECT_EQ(*three, (std::vector<std::string>{"http://a.example:1", "http://127.0.0.1:2",
                                              "http://[::1]:3"}));
  auto sixteen = client::ParseRegistryUrls(Urls(16));
  ASSERT_TRUE(sixteen.ok()) << ErrorOf(sixteen);
  EXPECT_EQ(sixteen->size(), 16u);
  EXPECT_EQ(sixteen->back(), "http://127.0.0.1:8515");
}

TEST(ProxyRegistryListTest, BadListsGetClearErrors) {
  auto error = [](std::string_view list) { return ErrorOf(client::ParseRegistryUrls(list)); };
  EXPECT_THAT(error(""), HasSubstr("no URL given"));
  EXPECT_THAT(error("  "), HasSubstr("no URL given"));
  EXPECT_THAT(error("http://a:1,,http://b:2"), HasSubstr("empty entry"));
  EXPECT_THAT(error("http://a:1,"), HasSubstr("empty entry"));
  EXPECT_THAT(error(Urls(17)), HasSubstr("more than 16 URLs"));
  EXPECT_THAT(error("http://a:1,http://a:1"), HasSubstr("\"http://a:1\" given twice"));
  EXPECT_THAT(error("http://a:1,http://a:1/"), HasSubstr("\"http://a:1\" given twice"));
  EXPECT_THAT(error("https://a:1"), HasSubstr("must be http://HOST:PORT"));
  EXPECT_THAT(error("a:1"), HasSubstr("must be http://HOST:PORT"));
  EXPECT_THAT(error("http://a"), HasSubstr("must be http://HOST:PORT"));
  EXPECT_THAT(error("http://:80"), HasSubstr("must be http://HOST:PORT"));
  EXPECT_THAT(error("http://a:0"), HasSubstr("port must be 1..65535"));
  EXPECT_THAT(error("http://a:65536"), HasSubstr("port must be 1..65535"));
  EXPECT_THAT(error("http://a:8x"), HasSubstr("port must be 1..65535"));
  EXPECT_THAT(error("http://a b:1"), HasSubstr("bad character in host"));
  EXPECT_THAT(error("http://u@a:1"), HasSubstr("bad character in host"));
  EXPECT_THAT(error("http://a:1/v1/x"), HasSubstr("port must be"));
  EXPECT_THAT(error("http://" + std::string(2000, 'a') + ":1"), HasSubstr("longer than 1024"));
  // The first bad entry is named even after good ones.
  EXPECT_THAT(error("http://a:1, http://b:99999"), HasSubstr("\"http://b:99999\""));
}

TEST(ProxyRegistryListTest, ValidateAcceptsAClusterAndNamesTheCulprit) {
  ProxyOptions o = ValidOptions();
  o.clusters[1].registry = Urls(3);
  EXPECT_TRUE(ValidateProxyOptions(o).ok()) << ErrorOf(ValidateProxyOptions(o));
  ExpectInvalid([](ProxyOptions& p) { p.clusters[1].registry = Urls(17); },
                "cluster \"users\": --registry: more than 16 URLs");
  ExpectInvalid(
      [](ProxyOptions& p) { p.clusters[1].registry = Urls(2) + ",http://127.0.0.1:8500"; },
      "given twice");
  ExpectInvalid([](ProxyOptions& p) { p.clusters[1].registry = std::string(20'000, 'x'); },
                "--registry is longer than");
}

TEST(ProxyRegistryListTest, FlagTakesACommaSeparatedList) {
  ClusterOptions c;
  ASSERT_TRUE(SetClusterSetting(&c, "registry", Urls(3)).ok());
  EXPECT_EQ(c.registry, Urls(3));
}

TEST(ProxyRegistryListTest, ConfigFileTakesAListOrACommaSeparatedValue) {
  const std::string head =
      "listeners:\n  - listen: 127.0.0.1:0\n    cluster: users\nclusters:\n  - name: users\n"
      "    service: users\n";
  auto as_list =
      ParseProxyConfig(head + "    registry: [http://127.0.0.1:1, http://127.0.0.1:2]\n");
  ASSERT_TRUE(as_list.ok()) << ErrorOf(as_list);
  EXPECT_EQ(as_list->clusters[0].registry, "http://127.0.0.1:1,http://127.0.0.1:2");
  auto as_text = ParseProxyConfig(head + "    registry: http://127.0.0.1:1, http://127.0.0.1:2\n");
  ASSERT_TRUE(as_text.ok()) << ErrorOf(as_text);
  EXPECT_EQ(as_text->clusters[0].registry, "http://127.0.0.1:1, http://127.0.0.1:2");

  EXPECT_THAT(ErrorOf(ParseProxyConfig(head + "    registry: [http://127.0.0.1:1, [x]]\n")),
              HasSubstr("line 7: each registry must be an http://HOST:PORT value"));
  std::string seventeen = "    registry: [";
  for (int i = 0; i < 17; ++i) seventeen += (i ? ", " : "") + Urls(1, 9000 + i);
  EXPECT_THAT(ErrorOf(ParseProxyConfig(head + seventeen + "]\n")),
              HasSubstr("\"registry\" has more than 16 items"));
  EXPECT_THAT(ErrorOf(ParseProxyConfig(head + "    registry: [http://127.0.0.1:1, ftp://x:2]\n")),
              HasSubstr("ftp://x:2"));
}

}  // namespace
}  // namespace haven::proxy
