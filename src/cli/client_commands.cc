#include "cli/client_commands.h"

#include <iostream>
#include <iterator>
#include <memory>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "base/base64.h"
#include "net/http_client.h"

namespace haven::cli {

namespace json = boost::json;

namespace {

std::string Normalize(std::string addr) {
  if (addr.find("://") == std::string::npos) addr = "http://" + addr;
  while (!addr.empty() && addr.back() == '/') addr.pop_back();
  return addr;
}

std::string EscapePath(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

// Runs one request; prints the error and returns nullopt unless the status is 2xx (or 404 when
// allowed, which comes back with status 404).
std::optional<net::HttpClientResult> Call(const ClientOptions& opts, std::string_view method,
                                          const std::string& target, const std::string& body = {},
                                          bool allow_404 = false) {
  net::HttpClient client(Normalize(opts.addr), 10'000);
  auto r = client.Request(method, target, body);
  if (!r.ok()) {
    std::cerr << "haven: " << r.status().message() << "\n";
    return std::nullopt;
  }
  if (r->status / 100 == 2 || (allow_404 && r->status == 404)) return *r;
  std::cerr << "haven: " << method << " " << target << ": HTTP " << r->status << ": " << r->body;
  if (r->body.empty() || r->body.back() != '\n') std::cerr << "\n";
  return std::nullopt;
}

json::value ParseOrNull(const std::string& body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  return ec ? json::value(nullptr) : v;
}

std::string Str(const json::value& v) { return v.is_string() ? std::string(v.as_string()) : ""; }

void AddServices(CLI::App& app, ClientOptions& opts) {
  auto* services = app.add_subcommand("services", "List, register and deregister services");
  services->require_subcommand(1);

  services->add_subcommand("list", "List service names and tags")->final_callback([&opts] {
    auto r = Call(opts, "GET", "/v1/catalog/services");
    if (!r) return void(opts.exit_code = 1);
    auto v = ParseOrNull(r->body);
    if (!v.is_object()) return void(opts.exit_code = 1);
    for (const auto& [name, tags] : v.as_object()) {
      std::string t;
      if (tags.is_array()) {
        for (const auto& tag : tags.as_array()) t += (t.empty() ? "" : ",") + Str(tag);
      }
      std::cout << fmt::format("{:<32} {}\n", std::string(name), t);
    }
  });

  struct Reg {
    std::string name, id, address, ttl, http, tcp, interval = "10s", deregister_after;
    int port = 0;
    std::vector<std::string> tags;
  };
  auto reg = std::make_shared<Reg>();
  auto* r = services->add_subcommand("register", "Register a service instance on the server");
  r->add_option("--name", reg->name, "Service name")->required();
  r->add_option("--id", reg->id, "Instance ID (default: the name)");
  r->add_option("--address", reg->address, "Instance address");
  r->add_option("--port", reg->port, "Instance port")->check(CLI::Range(0, 65535));
  r->add_option("--tag", reg->tags, "A tag (repeatable)");
  r->add_option("--ttl", reg->ttl, "Add a TTL check with this TTL (e.g. 10s)");
  r->add_option("--http", reg->http, "Add an HTTP check on this URL");
  r->add_option("--tcp", reg->tcp, "Add a TCP check on this HOST:PORT");
  r->add_option("--interval", reg->interval, "Interval of the HTTP/TCP check")
      ->capture_default_str();
  r->add_option("--deregister-after", reg->deregister_after,
                "Deregister after critical for this long (e.g. 1m)");
  r->final_callback([&opts, reg] {
    json::object body{{"Name", reg->name}, {"Port", reg->port}};
    if (!reg->id.empty()) body["ID"] = reg->id;
    if (!reg->address.empty()) body["Address"] = reg->address;
    json::array tags;
    for (const auto& t : reg->tags) tags.emplace_back(t);
    body["Tags"] = tags;
    json::object check;
    if (!reg->ttl.empty()) check["TTL"] = reg->ttl;
    if (!reg->http.empty()) check["HTTP"] = reg->http;
    if (!reg->tcp.empty()) check["TCP"] = reg->tcp;
    if (!reg->http.empty() || !reg->tcp.empty()) check["Interval"] = reg->interval;
    if (!check.empty()) {
      if (!reg->deregister_after.empty()) {
        check["DeregisterCriticalServiceAfter"] = reg->deregister_after;
      }
      body["Check"] = check;
    }
    if (!Call(opts, "PUT", "/v1/agent/service/register", json::serialize(body))) {
      opts.exit_code = 1;
    }
  });

  auto dereg_id = std::make_shared<std::string>();
  auto* d = services->add_subcommand("deregister", "Deregister a service instance by ID");
  d->add_option("id", *dereg_id, "Instance ID")->required();
  d->final_callback([&opts, dereg_id] {
    if (!Call(opts, "PUT", "/v1/agent/service/deregister/" + EscapePath(*dereg_id))) {
      opts.exit_code = 1;
    }
  });
}

void AddHealth(CLI::App& app, ClientOptions& opts) {
  auto name = std::make_shared<std::string>();
  auto passing = std::make_shared<bool>(false);
  auto* h = app.add_subcommand("health", "Show the instances of a service and their health");
  h->add_option("service", *name, "Service name")->required();
  h->add_flag("--passing", *passing, "Only instances whose checks all pass");
  h->final_callback([&opts, name, passing] {
    std::string target = "/v1/health/service/" + EscapePath(*name) + (*passing ? "?passing" : "");
    auto r = Call(opts, "GET", target);
    if (!r) return void(opts.exit_code = 1);
    auto v = ParseOrNull(r->body);
    if (!v.is_array()) return void(opts.exit_code = 1);
    std::cout << fmt::format("{:<24} {:<32} {:<22} {}\n", "NODE", "ID", "ADDRESS", "STATUS");
    for (const auto& e : v.as_array()) {
      const auto& node = e.at("Node");
      const auto& svc = e.at("Service");
      std::string status = "passing";
      for (const auto& c : e.at("Checks").as_array()) {
        std::string s = Str(c.at("Status"));
        if (s == "critical" || (s == "warning" && status == "passing")) status = s;
      }
      std::string addr = Str(svc.at("Address"));
      if (addr.empty()) addr = Str(node.at("Address"));
      std::cout << fmt::format("{:<24} {:<32} {:<22} {}\n", Str(node.at("Node")), Str(svc.at("ID")),
                               addr + ":" + std::to_string(svc.at("Port").to_number<int64_t>()),
                               status);
    }
  });
}

void AddKv(CLI::App& app, ClientOptions& opts) {
  auto* kv = app.add_subcommand("kv", "Read and write the KV store");
  kv->require_subcommand(1);

  struct Args {
    std::string key, value;
    bool recurse = false;
  };
  auto get = std::make_shared<Args>();
  auto* g = kv->add_subcommand("get", "Print a key's value (or, with --recurse, key=value lines)");
  g->add_option("key", get->key, "Key or prefix")->required();
  g->add_flag("--recurse", get->recurse, "Every key under the prefix");
  g->final_callback([&opts, get] {
    std::string target = "/v1/kv/" + EscapePath(get->key) + (get->recurse ? "?recurse" : "?raw");
    auto r = Call(opts, "GET", target, {}, /*allow_404=*/true);
    if (!r) return void(opts.exit_code = 1);
    if (r->status == 404) {
      std::cerr << "haven: key not found: " << get->key << "\n";
      return void(opts.exit_code = 1);
    }
    if (!get->recurse) {
      std::cout << r->body << (r->body.empty() || r->body.back() != '\n' ? "\n" : "");
      return;
    }
    auto v = ParseOrNull(r->body);
    if (!v.is_array()) return void(opts.exit_code = 1);
    for (const auto& e : v.as_array()) {
      auto value = e.at("Value").is_string() ? Base64Decode(Str(e.at("Value")))
                                             : Result<std::string>(std::string());
      std::cout << Str(e.at("Key")) << "=" << (value.ok() ? *value : "") << "\n";
    }
  });

  auto put = std::make_shared<Args>();
  auto* p = kv->add_subcommand("put", "Set a key (value \"-\" reads standard input)");
  p->add_option("key", put->key, "Key")->required();
  p->add_option("value", put->value, "Value")->required();
  p->final_callback([&opts, put] {
    std::string value = put->value;
    if (value == "-") value.assign(std::istreambuf_iterator<char>(std::cin), {});
    auto r = Call(opts, "PUT", "/v1/kv/" + EscapePath(put->key), value);
    if (!r || r->body.find("true") == std::string::npos) opts.exit_code = 1;
  });

  auto del = std::make_shared<Args>();
  auto* d = kv->add_subcommand("delete", "Delete a key (or, with --recurse, a prefix)");
  d->add_option("key", del->key, "Key or prefix")->required();
  d->add_flag("--recurse", del->recurse, "Every key under the prefix");
  d->final_callback([&opts, del] {
    auto r =
        Call(opts, "DELETE", "/v1/kv/" + EscapePath(del->key) + (del->recurse ? "?recurse" : ""));
    if (!r) opts.exit_code = 1;
  });
}

}  // namespace

void AddClientCommands(CLI::App& app, ClientOptions& opts) {
  app.add_option("--addr", opts.addr,
                 "Server HTTP address (default: $HAVEN_HTTP_ADDR, then http://127.0.0.1:8500)");
  AddServices(app, opts);
  AddHealth(app, opts);
  AddKv(app, opts);
}

int RunClientCommand(const CLI::App&, const ClientOptions& opts) { return opts.exit_code; }

}  // namespace haven::cli
