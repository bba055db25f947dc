#include "node/consul_json.h"

#include <set>
#include <string>

#include <gtest/gtest.h>
#include <boost/json.hpp>

namespace haven::node::consul {
namespace {

namespace json = boost::json;

// Round trip through text so the test sees exactly what a client would.
json::object Reparse(const json::object& o) { return json::parse(ToJson(o)).as_object(); }

std::set<std::string> Keys(const json::object& o) {
  std::set<std::string> keys;
  for (const auto& kv : o) keys.insert(std::string(kv.key()));
  return keys;
}

std::string ErrorOf(std::string_view body) {
  auto r = ParseAgentServiceRegister(body, "n1");
  EXPECT_FALSE(r.ok()) << body;
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().message();
  return r.status().message();
}

bool Contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// ---- agent service register ----

TEST(ConsulJsonAgentRegister, ParsesFullServiceWithTtlCheck) {
  auto r = ParseAgentServiceRegister(R"({
    "Name": "web", "ID": "web-1", "Tags": ["a", "b"], "Address": "10.0.0.1", "Port": 8080,
    "Meta": {"version": "1"}, "Weights": {"Passing": 3, "Warning": 2}, "EnableTagOverride": true,
    "Check": {"TTL": "15s", "Notes": "n", "Status": "passing"},
    "Kind": "", "UnknownField": {"x": 1}})",
                                     "node-a");
  ASSERT_TRUE(r.ok()) << r.status().message();
  const pb::Service& s = r->service;
  EXPECT_EQ(s.name(), "web");
  EXPECT_EQ(s.id(), "web-1");
  ASSERT_EQ(s.tags_size(), 2);
  EXPECT_EQ(s.tags(1), "b");
  EXPECT_EQ(s.address(), "10.0.0.1");
  EXPECT_EQ(s.port(), 8080);
  EXPECT_EQ(s.meta().at("version"), "1");
  EXPECT_EQ(s.weight_passing(), 3);
  EXPECT_EQ(s.weight_warning(), 2);
  EXPECT_TRUE(s.enable_tag_override());
  EXPECT_EQ(s.node(), "node-a");
  ASSERT_EQ(r->checks.size(), 1u);
  const pb::Check& c = r->checks[0];
  EXPECT_EQ(c.id(), "service:web-1");
  EXPECT_EQ(c.name(), "Service 'web' check");
  EXPECT_EQ(c.status(), "passing");
  EXPECT_EQ(c.notes(), "n");
  EXPECT_EQ(c.node(), "node-a");
  EXPECT_EQ(c.service_id(), "web-1");
  EXPECT_EQ(c.service_name(), "web");
  EXPECT_EQ(c.definition().ttl_ms(), 15000);
}

TEST(ConsulJsonAgentRegister, AppliesDefaults) {
  auto r = ParseAgentServiceRegister(R"({"Name": "db"})", "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->service.id(), "db");
  EXPECT_EQ(r->service.weight_passing(), 1);
  EXPECT_EQ(r->service.weight_warning(), 1);
  EXPECT_EQ(r->service.port(), 0);
  EXPECT_TRUE(r->checks.empty());
}

TEST(ConsulJsonAgentRegister, HttpCheckWithDefaultsAndHeaders) {
  auto r = ParseAgentServiceRegister(R"({"Name": "api", "Check": {
      "HTTP": "http://127.0.0.1:80/health", "Interval": "1m30s", "Method": "POST",
      "Header": {"X-A": ["1", "2"], "X-Empty": []}, "TLSSkipVerify": true,
      "DeregisterCriticalServiceAfter": "10m", "SuccessBeforePassing": 2,
      "FailuresBeforeCritical": 3}})",
                                     "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  const pb::CheckDefinition& d = r->checks[0].definition();
  EXPECT_EQ(d.http(), "http://127.0.0.1:80/health");
  EXPECT_EQ(d.interval_ms(), 90000);
  EXPECT_EQ(d.timeout_ms(), 10000);
  EXPECT_EQ(d.method(), "POST");
  EXPECT_EQ(d.header().at("X-A"), "1");
  EXPECT_FALSE(d.header().contains("X-Empty"));
  EXPECT_TRUE(d.tls_skip_verify());
  EXPECT_EQ(d.deregister_critical_after_ms(), 600000);
  EXPECT_EQ(d.success_before_passing(), 2);
  EXPECT_EQ(d.failures_before_critical(), 3);
  EXPECT_EQ(r->checks[0].status(), "critical");
}

TEST(ConsulJsonAgentRegister, DurationAsNanosecondNumber) {
  auto r = ParseAgentServiceRegister(
      R"({"Name": "t", "Check": {"TCP": "localhost:22", "Interval": 2000000000, "Timeout": 500000000}})",
      "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->checks[0].definition().interval_ms(), 2000);
  EXPECT_EQ(r->checks[0].definition().timeout_ms(), 500);
  EXPECT_EQ(r->checks[0].definition().tcp(), "localhost:22");
}

TEST(ConsulJsonAgentRegister, KeysMatchCaseInsensitivelyAndSnakeCaseAliases) {
  auto r = ParseAgentServiceRegister(R"({"name": "svc", "id": "svc-9", "PORT": 1, "tags": ["x"],
      "checks": [{"check_id": "c1", "ttl": "5s", "deregister_critical_service_after": "1m",
                  "success_before_passing": 4, "failures_before_critical": 5},
                 {"checkid": "c2", "http": "https://h/", "interval": "2s",
                  "tls_skip_verify": true}]})",
                                     "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->service.name(), "svc");
  EXPECT_EQ(r->service.id(), "svc-9");
  EXPECT_EQ(r->service.port(), 1);
  ASSERT_EQ(r->checks.size(), 2u);
  EXPECT_EQ(r->checks[0].id(), "c1");
  EXPECT_EQ(r->checks[0].definition().deregister_critical_after_ms(), 60000);
  EXPECT_EQ(r->checks[0].definition().success_before_passing(), 4);
  EXPECT_EQ(r->checks[0].definition().failures_before_critical(), 5);
  EXPECT_EQ(r->checks[1].id(), "c2");
  EXPECT_TRUE(r->checks[1].definition().tls_skip_verify());
}

TEST(ConsulJsonAgentRegister, ExactKeyWinsOverCaseInsensitive) {
  auto r = ParseAgentServiceRegister(R"({"name": "lower", "Name": "exact"})", "n1");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->service.name(), "exact");
}

TEST(ConsulJsonAgentRegister, DefaultCheckIdsForSeveralChecks) {
  auto r = ParseAgentServiceRegister(
      R"({"Name": "s", "ID": "s1", "Check": {"TTL": "1s"}, "Checks": [{"TTL": "2s"}, {"TTL": "3s", "ID": "mine"}]})",
      "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->checks.size(), 3u);
  EXPECT_EQ(r->checks[0].id(), "service:s1:1");
  EXPECT_EQ(r->checks[0].definition().ttl_ms(), 1000);
  EXPECT_EQ(r->checks[1].id(), "service:s1:2");
  EXPECT_EQ(r->checks[2].id(), "mine");
}

TEST(ConsulJsonAgentRegister, NullFieldsAreAbsent) {
  auto r = ParseAgentServiceRegister(R"({"Name": "s", "Tags": null, "Check": null, "Port": null})",
                                     "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->checks.empty());
}

TEST(ConsulJsonAgentRegister, RejectsInvalidJson) {
  std::string m = ErrorOf(R"({"Name": "x",,})");
  EXPECT_TRUE(Contains(m, "Request decode failed: invalid JSON at offset 13")) << m;
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x")"), "invalid JSON"));
  EXPECT_TRUE(Contains(ErrorOf(""), "Request decode failed"));
  EXPECT_TRUE(Contains(ErrorOf("[1]"), "expected a JSON object"));
  std::string deep(100, '[');
  EXPECT_TRUE(Contains(ErrorOf(deep), "invalid JSON"));
}

TEST(ConsulJsonAgentRegister, RejectsWrongTypes) {
  EXPECT_EQ(ErrorOf(R"({"Name": "x", "Port": "80"})"),
            "Request decode failed: Port: expected number, got string");
  EXPECT_EQ(ErrorOf(R"({"Name": "x", "Tags": "a"})"),
            "Request decode failed: Tags: expected array, got string");
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Tags": [1]})"), "Tags[0]: expected string"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": 5})"), "Name: expected string, got number"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Port": 1.5})"), "Port: expected an integer"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Port": 70000})"), "Port"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Meta": {"k": 1}})"), "expected string"));
  EXPECT_TRUE(
      Contains(ErrorOf(R"({"Name": "x", "Checks": [{"TTL": "1s"}, 3]})"), "Checks[1]: expected"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "EnableTagOverride": "yes"})"), "expected bool"));
}

TEST(ConsulJsonAgentRegister, RejectsMissingName) {
  EXPECT_EQ(ErrorOf(R"({"ID": "x"})"), "Missing service name");
}

TEST(ConsulJsonAgentRegister, RejectsBadWeights) {
  EXPECT_TRUE(
      Contains(ErrorOf(R"({"Name": "x", "Weights": {"Passing": 0}})"), "Passing must be greater"));
}

TEST(ConsulJsonAgentRegister, RejectsBadChecks) {
  EXPECT_TRUE(Contains(
      ErrorOf(R"({"Name": "x", "Check": {"TTL": "1s", "HTTP": "http://a/", "Interval": "1s"}})"),
      "Invalid check: exactly one of TTL, HTTP or TCP"));
  std::string args =
      ErrorOf(R"({"Name": "x", "Check": {"Args": ["/bin/true"], "Interval": "1s"}})");
  EXPECT_TRUE(Contains(args, "Invalid check: Args checks are not supported")) << args;
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Check": {"GRPC": "a:1", "Interval": "1s"}})"),
                       "GRPC checks are not supported"));
  std::string ttl = ErrorOf(R"({"Name": "x", "Check": {"TTL": "abc"}})");
  EXPECT_TRUE(Contains(ttl, "Check.TTL")) << ttl;
  EXPECT_EQ(ErrorOf(R"({"Name": "x", "Check": {"TTL": "0s"}})"), "Invalid check: TTL must be > 0");
  EXPECT_EQ(ErrorOf(R"({"Name": "x", "Check": {"TCP": "a:1", "Interval": "-5s"}})"),
            "Invalid check: Interval must be > 0");
  EXPECT_EQ(ErrorOf(R"({"Name": "x", "Check": {"HTTP": "http://a/"}})"),
            "Invalid check: Interval must be > 0");
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Check": {"Notes": "none"}})"),
                       "one of TTL, HTTP or TCP must be set"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Check": {"TTL": "1s", "Status": "ok"}})"),
                       "Status must be passing"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Check": {"HTTP": "ftp://a", "Interval": "1s"}})"),
                       "HTTP must be"));
}

TEST(ConsulJsonAgentRegister, EnforcesLimits) {
  std::string tags;
  for (int i = 0; i < 65; ++i) tags += (i ? ",\"t" : "\"t") + std::to_string(i) + "\"";
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Tags": [)" + tags + "]}"), "Too many Tags"));
  std::string checks;
  for (int i = 0; i < 33; ++i) checks += std::string(i ? "," : "") + R"({"TTL": "1s"})";
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Checks": [)" + checks + "]}"), "Too many checks"));
  std::string meta;
  for (int i = 0; i < 65; ++i) meta += (i ? ",\"k" : "\"k") + std::to_string(i) + "\": \"v\"";
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Meta": {)" + meta + "}}"), "too many pairs"));
  EXPECT_TRUE(Contains(
      ErrorOf(R"({"Name": "x", "Meta": {")" + std::string(129, 'k') + R"(": "v"}})"), "too long"));
  EXPECT_TRUE(Contains(
      ErrorOf(R"({"Name": "x", "Meta": {"k": ")" + std::string(513, 'v') + R"("}})"), "too long"));
  EXPECT_TRUE(Contains(ErrorOf(R"({"Name": "x", "Meta": {"a b": "v"}})"), "invalid characters"));
  EXPECT_TRUE(
      Contains(ErrorOf(R"({"Name": ")" + std::string(4097, 'n') + R"("})"), "longer than 4096"));
  auto big = ParseAgentServiceRegister(std::string(2 << 20, ' '), "n1");
  EXPECT_EQ(big.status().code(), Code::kTooLarge);
}

// ---- check update ----

TEST(ConsulJsonCheckUpdate, ParsesAndValidates) {
  auto u = ParseCheckUpdate(R"({"status": "warning", "Output": "slow"})");
  ASSERT_TRUE(u.ok()) << u.status().message();
  EXPECT_EQ(u->status, "warning");
  EXPECT_EQ(u->output, "slow");
  EXPECT_FALSE(ParseCheckUpdate(R"({"Status": "bad"})").ok());
  EXPECT_FALSE(ParseCheckUpdate(R"({"Status": "passing", "Output": 3})").ok());
  EXPECT_FALSE(ParseCheckUpdate("nope").ok());
  auto longer =
      ParseCheckUpdate(R"({"Status": "passing", "Output": ")" + std::string(5000, 'o') + "\"}");
  ASSERT_TRUE(longer.ok());
  EXPECT_EQ(longer->output.size(), 4096u);
}

// ---- catalog ----

TEST(ConsulJsonCatalog, RegisterWithService) {
  auto r = ParseCatalogRegister(R"({"Node": "ext", "Address": "192.168.0.9", "Datacenter": "dc1",
      "TaggedAddresses": {"wan": "1.2.3.4"}, "NodeMeta": {"rack": "r1"},
      "Service": {"Service": "redis", "ID": "redis1", "Port": 6379, "Tags": ["primary"]},
      "Check": {"CheckID": "service:redis1", "Name": "Redis health", "Status": "passing",
                "ServiceID": "redis1", "Definition": {"TCP": "localhost:6379", "Interval": "5s"}}})");
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_TRUE(r->has_register_service());
  const auto& rs = r->register_service();
  EXPECT_EQ(rs.node().name(), "ext");
  EXPECT_EQ(rs.node().address(), "192.168.0.9");
  EXPECT_EQ(rs.node().tagged_addresses().at("wan"), "1.2.3.4");
  EXPECT_EQ(rs.node().meta().at("rack"), "r1");
  EXPECT_EQ(rs.service().name(), "redis");
  EXPECT_EQ(rs.service().id(), "redis1");
  EXPECT_EQ(rs.service().node(), "ext");
  EXPECT_EQ(rs.service().port(), 6379);
  ASSERT_EQ(rs.checks_size(), 1);
  EXPECT_EQ(rs.checks(0).id(), "service:redis1");
  EXPECT_EQ(rs.checks(0).service_id(), "redis1");
  EXPECT_EQ(rs.checks(0).status(), "passing");
  EXPECT_EQ(rs.checks(0).node(), "ext");
  EXPECT_EQ(rs.checks(0).definition().tcp(), "localhost:6379");
  EXPECT_EQ(rs.checks(0).definition().interval_ms(), 5000);
}

TEST(ConsulJsonCatalog, RegisterNodeOnly) {
  auto r = ParseCatalogRegister(
      R"({"Node": "n2", "Address": "10.1.1.1", "Checks": [{"Name": "disk", "Status": "warning"}]})");
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_TRUE(r->has_register_node());
  EXPECT_EQ(r->register_node().node().name(), "n2");
  ASSERT_EQ(r->register_node().checks_size(), 1);
  EXPECT_EQ(r->register_node().checks(0).id(), "disk");  // CheckID defaults to Name
  EXPECT_EQ(r->register_node().checks(0).status(), "warning");
}

TEST(ConsulJsonCatalog, RegisterErrors) {
  EXPECT_EQ(ParseCatalogRegister(R"({"Address": "a"})").status().message(), "Must provide node");
  EXPECT_EQ(ParseCatalogRegister(R"({"Node": "a"})").status().message(), "Must provide address");
  EXPECT_TRUE(
      ParseCatalogRegister(R"({"Node": "a", "SkipNodeUpdate": true, "Service": {"Service": "s"}})")
          .ok());
  EXPECT_EQ(ParseCatalogRegister(R"({"Node": "a", "Address": "b", "Service": {"ID": "s"}})")
                .status()
                .message(),
            "Missing service name");
  EXPECT_FALSE(ParseCatalogRegister(R"({"Node": "a", "Address": "b", "Service": "s"})").ok());
  EXPECT_FALSE(
      ParseCatalogRegister(R"({"Node": "a", "Address": "b", "Check": {"Notes": "x"}})").ok());
}

TEST(ConsulJsonCatalog, Deregister) {
  auto d = ParseCatalogDeregister(R"({"Node": "n", "ServiceID": "s", "Datacenter": "dc1"})");
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->node(), "n");
  EXPECT_EQ(d->service_id(), "s");
  EXPECT_EQ(d->check_id(), "");
  EXPECT_EQ(ParseCatalogDeregister(R"({"CheckID": "c"})").status().message(), "Must provide node");
}

// ---- sessions ----

TEST(ConsulJsonSession, DefaultsFromEmptyBody) {
  for (std::string_view body : {"", "{}", "  \n"}) {
    auto s = ParseSessionCreate(body, "node-x");
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_EQ(s->node(), "node-x");
    EXPECT_EQ(s->behavior(), "release");
    EXPECT_EQ(s->ttl_ms(), 0);
    EXPECT_EQ(s->lock_delay_ms(), 15000);
    ASSERT_EQ(s->node_checks_size(), 1);
    EXPECT_EQ(s->node_checks(0), "serfHealth");
    EXPECT_EQ(s->id(), "");
  }
}

TEST(ConsulJsonSession, ParsesFields) {
  auto s = ParseSessionCreate(
      R"({"Name": "lock", "Node": "other", "Behavior": "delete", "TTL": "30s", "LockDelay": "5s",
          "Checks": ["a"], "NodeChecks": ["a", "b"]})",
      "n1");
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->name(), "lock");
  EXPECT_EQ(s->node(), "other");
  EXPECT_EQ(s->behavior(), "delete");
  EXPECT_EQ(s->ttl_ms(), 30000);
  EXPECT_EQ(s->lock_delay_ms(), 5000);
  ASSERT_EQ(s->node_checks_size(), 2);
  EXPECT_EQ(s->node_checks(1), "b");
}

TEST(ConsulJsonSession, EmptyChecksMeansNone) {
  auto s = ParseSessionCreate(R"({"Checks": []})", "n1");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->node_checks_size(), 0);
}

TEST(ConsulJsonSession, LockDelayNumbers) {
  EXPECT_EQ(ParseSessionCreate(R"({"LockDelay": 7})", "n")->lock_delay_ms(), 7000);  // seconds
  EXPECT_EQ(ParseSessionCreate(R"({"LockDelay": 2000000000})", "n")->lock_delay_ms(), 2000);
  EXPECT_EQ(ParseSessionCreate(R"({"LockDelay": 0})", "n")->lock_delay_ms(), 0);
  EXPECT_FALSE(ParseSessionCreate(R"({"LockDelay": "2m"})", "n").ok());
  EXPECT_FALSE(ParseSessionCreate(R"({"LockDelay": -1})", "n").ok());
}

TEST(ConsulJsonSession, Errors) {
  EXPECT_TRUE(Contains(ParseSessionCreate(R"({"TTL": "500ms"})", "n").status().message(),
                       "Invalid Session TTL"));
  EXPECT_FALSE(ParseSessionCreate(R"({"TTL": "25h"})", "n").ok());
  EXPECT_TRUE(ParseSessionCreate(R"({"TTL": "1s"})", "n").ok());
  EXPECT_TRUE(ParseSessionCreate(R"({"TTL": ""})", "n").ok());
  EXPECT_FALSE(ParseSessionCreate(R"({"Behavior": "explode"})", "n").ok());
  EXPECT_FALSE(ParseSessionCreate(R"({"ServiceChecks": [{"ID": "x"}]})", "n").ok());
  EXPECT_FALSE(ParseSessionCreate("[", "n").ok());
}

// ---- renderers ----

pb::Service SampleService() {
  pb::Service s;
  s.set_id("web-1");
  s.set_name("web");
  s.add_tags("v1");
  s.set_address("10.0.0.1");
  s.set_port(80);
  (*s.mutable_meta())["k"] = "v";
  s.set_weight_passing(5);
  s.set_weight_warning(1);
  s.set_node("n1");
  s.set_create_index(7);
  s.set_modify_index(9);
  return s;
}

pb::Node SampleNode() {
  pb::Node n;
  n.set_name("n1");
  n.set_address("127.0.0.1");
  (*n.mutable_meta())["zone"] = "a";
  (*n.mutable_tagged_addresses())["lan"] = "127.0.0.1";
  n.set_create_index(3);
  n.set_modify_index(4);
  return n;
}

pb::Check SampleCheck() {
  pb::Check c;
  c.set_id("service:web-1");
  c.set_name("Service 'web' check");
  c.set_node("n1");
  c.set_service_id("web-1");
  c.set_service_name("web");
  c.add_service_tags("v1");
  c.set_status("passing");
  c.set_output("ok");
  c.mutable_definition()->set_http("http://x/");
  c.mutable_definition()->set_interval_ms(10000);
  c.mutable_definition()->set_timeout_ms(1500);
  (*c.mutable_definition()->mutable_header())["A"] = "b";
  c.set_create_index(11);
  c.set_modify_index(12);
  return c;
}

TEST(ConsulJsonRender, AgentService) {
  json::object o = Reparse(AgentService(SampleService()));
  EXPECT_EQ(Keys(o), (std::set<std::string>{"ID", "Service", "Tags", "Meta", "Port", "Address",
                                            "Weights", "EnableTagOverride", "Datacenter"}));
  EXPECT_EQ(o["ID"], "web-1");
  EXPECT_EQ(o["Service"], "web");
  EXPECT_EQ(o["Tags"].as_array()[0], "v1");
  EXPECT_EQ(o["Meta"].as_object()["k"], "v");
  EXPECT_EQ(o["Port"].as_int64(), 80);
  EXPECT_EQ(o["Weights"].as_object()["Passing"].as_int64(), 5);
  EXPECT_EQ(o["EnableTagOverride"], false);
}

TEST(ConsulJsonRender, AgentServiceRoundTripsThroughParser) {
  std::string body = ToJson(AgentService(SampleService()));
  // The agent form names the service "Service"; the register body names it "Name".
  json::object o = json::parse(body).as_object();
  o["Name"] = o["Service"];
  auto r = ParseAgentServiceRegister(ToJson(o), "n1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  pb::Service expected = SampleService();
  expected.clear_create_index();
  expected.clear_modify_index();
  EXPECT_EQ(r->service.SerializeAsString(), expected.SerializeAsString());
}

TEST(ConsulJsonRender, HealthCheck) {
  json::object o = Reparse(HealthCheck(SampleCheck()));
  EXPECT_EQ(Keys(o),
            (std::set<std::string>{"Node", "CheckID", "Name", "Status", "Notes", "Output",
                                   "ServiceID", "ServiceName", "ServiceTags", "Type", "Interval",
                                   "Timeout", "Definition", "CreateIndex", "ModifyIndex"}));
  EXPECT_EQ(o["CheckID"], "service:web-1");
  EXPECT_EQ(o["Type"], "http");
  EXPECT_EQ(o["Interval"], "10s");
  EXPECT_EQ(o["Timeout"], "1.5s");
  EXPECT_EQ(o["ServiceTags"].as_array()[0], "v1");
  EXPECT_EQ(o["CreateIndex"].to_number<uint64_t>(), 11u);
  json::object& d = o["Definition"].as_object();
  EXPECT_EQ(d["HTTP"], "http://x/");
  EXPECT_EQ(d["Header"].as_object()["A"].as_array()[0], "b");
  EXPECT_EQ(d["Interval"], "10s");

  pb::Check ttl;
  ttl.mutable_definition()->set_ttl_ms(30000);
  json::object t = Reparse(HealthCheck(ttl));
  EXPECT_EQ(t["Type"], "ttl");
  EXPECT_EQ(t["Interval"], "");
  EXPECT_EQ(Reparse(HealthCheck(pb::Check{}))["Type"], "");
}

TEST(ConsulJsonRender, CatalogNode) {
  json::object o = Reparse(CatalogNode(SampleNode()));
  EXPECT_EQ(Keys(o),
            (std::set<std::string>{"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta",
                                   "CreateIndex", "ModifyIndex"}));
  EXPECT_EQ(o["Node"], "n1");
  EXPECT_EQ(o["Datacenter"], "dc1");
  EXPECT_EQ(o["Meta"].as_object()["zone"], "a");
  EXPECT_EQ(o["TaggedAddresses"].as_object()["lan"], "127.0.0.1");
  EXPECT_EQ(o["ModifyIndex"].to_number<uint64_t>(), 4u);
}

TEST(ConsulJsonRender, CatalogService) {
  json::object o = Reparse(CatalogService(SampleNode(), SampleService()));
  for (const char* k :
       {"ServiceID", "ServiceName", "ServiceTags", "ServiceAddress", "ServicePort", "ServiceMeta",
        "ServiceWeights", "ServiceEnableTagOverride", "Node", "Address", "NodeMeta", "Datacenter",
        "TaggedAddresses", "CreateIndex", "ModifyIndex"}) {
    EXPECT_TRUE(o.contains(k)) << k;
  }
  EXPECT_EQ(o["ServiceID"], "web-1");
  EXPECT_EQ(o["ServiceName"], "web");
  EXPECT_EQ(o["ServicePort"].as_int64(), 80);
  EXPECT_EQ(o["Address"], "127.0.0.1");
  EXPECT_EQ(o["ServiceAddress"], "10.0.0.1");
  EXPECT_EQ(o["ServiceWeights"].as_object()["Passing"].as_int64(), 5);
  EXPECT_EQ(o["CreateIndex"].to_number<uint64_t>(), 7u);
}

TEST(ConsulJsonRender, HealthServiceEntry) {
  pb::Check c = SampleCheck();
  json::object o = Reparse(HealthServiceEntry(SampleNode(), SampleService(), {&c, nullptr}));
  EXPECT_EQ(Keys(o), (std::set<std::string>{"Node", "Service", "Checks"}));
  EXPECT_EQ(o["Node"].as_object()["Node"], "n1");
  json::object& s = o["Service"].as_object();
  EXPECT_EQ(Keys(s),
            (std::set<std::string>{"ID", "Service", "Tags", "Address", "Meta", "Port", "Weights",
                                   "EnableTagOverride", "CreateIndex", "ModifyIndex"}));
  EXPECT_EQ(s["Service"], "web");
  ASSERT_EQ(o["Checks"].as_array().size(), 1u);
  EXPECT_EQ(o["Checks"].as_array()[0].as_object()["Status"], "passing");
}

TEST(ConsulJsonRender, KVEntry) {
  pb::KVEntry e;
  e.set_key("cfg/a");
  e.set_value(std::string("hi\0!", 4));
  e.set_flags(42);
  e.set_lock_index(1);
  e.set_create_index(5);
  e.set_modify_index(6);
  json::object o = Reparse(KVEntry(e));
  EXPECT_EQ(Keys(o), (std::set<std::string>{"LockIndex", "Key", "Flags", "Value", "CreateIndex",
                                            "ModifyIndex"}));
  EXPECT_EQ(o["Value"], "aGkAIQ==");
  EXPECT_EQ(o["Flags"].to_number<uint64_t>(), 42u);
  e.clear_value();
  e.set_session("sess");
  json::object empty = Reparse(KVEntry(e));
  EXPECT_TRUE(empty["Value"].is_null());
  EXPECT_EQ(empty["Session"], "sess");
}

TEST(ConsulJsonRender, Session) {
  auto parsed = ParseSessionCreate(R"({"Name": "l", "TTL": "10s"})", "n1");
  ASSERT_TRUE(parsed.ok());
  pb::Session s = *parsed;
  s.set_id("abc");
  s.set_create_index(8);
  s.set_modify_index(8);
  json::object o = Reparse(Session(s));
  EXPECT_EQ(Keys(o), (std::set<std::string>{"ID", "Name", "Node", "LockDelay", "Behavior", "TTL",
                                            "NodeChecks", "ServiceChecks", "Checks", "CreateIndex",
                                            "ModifyIndex"}));
  EXPECT_EQ(o["ID"], "abc");
  EXPECT_EQ(o["LockDelay"].to_number<int64_t>(), 15'000'000'000);
  EXPECT_EQ(o["Behavior"], "release");
  EXPECT_EQ(o["TTL"], "10s");
  EXPECT_TRUE(o["ServiceChecks"].is_null());
  EXPECT_EQ(o["NodeChecks"].as_array()[0], "serfHealth");
  s.set_ttl_ms(0);
  EXPECT_EQ(Reparse(Session(s))["TTL"], "");
}

TEST(ConsulJsonRender, ToJsonIsCompact) {
  json::object o{{"a", 1}, {"b", json::array{1, 2}}};
  EXPECT_EQ(ToJson(o), R"({"a":1,"b":[1,2]})");
}

}  // namespace
}  // namespace haven::node::consul
