#include "cli/client_commands.h"

#include <algorithm>
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

// --arg NAME=VALUE: a number when VALUE is digits, else a string (x-dead-letter-exchange=dlx).
Result<json::object> ParseQueueArgs(const std::vector<std::string>& args) {
  json::object out;
  for (const auto& a : args) {
    auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Status::InvalidArgument("--arg wants NAME=VALUE, got \"" + a + "\"");
    }
    std::string value = a.substr(eq + 1);
    bool digits =
        !value.empty() && value.size() <= 18 &&
        std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits) {
      out[a.substr(0, eq)] = std::stoll(value);
    } else {
      out[a.substr(0, eq)] = value;
    }
  }
  return out;
}

void PrintQueues(const json::value& v) {
  std::cout << fmt::format("{:<32} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}\n", "QUEUE", "MESSAGES",
                           "READY", "UNACKED", "CONSUMERS", "PUBLISH/S", "DELIVER/S");
  if (!v.is_array()) return;
  auto num = [](const json::value& x) {
    return x.is_uint64()   ? static_cast<double>(x.as_uint64())
           : x.is_int64()  ? static_cast<double>(x.as_int64())
           : x.is_double() ? x.as_double()
                           : 0.0;
  };
  for (const auto& q : v.as_array()) {
    const auto& o = q.as_object();
    std::cout << fmt::format("{:<32} {:>10} {:>10} {:>10} {:>9} {:>10.1f} {:>10.1f}\n",
                             Str(o.at("name")), num(o.at("messages")), num(o.at("messages_ready")),
                             num(o.at("messages_unacknowledged")), num(o.at("consumers")),
                             num(o.at("publish_rate")), num(o.at("deliver_rate")));
  }
}

void AddMq(CLI::App& app, ClientOptions& opts) {
  auto* mq =
      app.add_subcommand("mq", "Queues: list, declare, delete, publish, consume (over HTTP)");
  mq->require_subcommand(1);

  mq->add_subcommand("list", "Queues with their depth, consumers and rates")
      ->final_callback([&opts] {
        auto r = Call(opts, "GET", "/v1/mq/queues");
        if (!r) return void(opts.exit_code = 1);
        PrintQueues(ParseOrNull(r->body));
      });

  struct Args {
    std::string queue, exchange, key, body;
    std::vector<std::string> args;
    bool transient = false;
    uint64_t count = 1;
  };
  auto decl = std::make_shared<Args>();
  auto* dc = mq->add_subcommand("declare", "Declare a durable (quorum) queue");
  dc->add_option("queue", decl->queue, "Queue name")->required();
  dc->add_option("--arg", decl->args, "Queue argument NAME=VALUE, e.g. x-message-ttl=60000");
  dc->add_flag("--transient", decl->transient, "Not durable");
  dc->final_callback([&opts, decl] {
    auto args = ParseQueueArgs(decl->args);
    if (!args.ok()) {
      std::cerr << "haven: " << args.status().message() << "\n";
      return void(opts.exit_code = 2);
    }
    json::object body{{"durable", !decl->transient}, {"arguments", *args}};
    auto r = Call(opts, "PUT", "/v1/mq/queues/" + EscapePath(decl->queue), json::serialize(body));
    if (!r) return void(opts.exit_code = 1);
    std::cout << "queue " << decl->queue << " declared\n";
  });

  auto del = std::make_shared<Args>();
  auto* dl = mq->add_subcommand("delete", "Delete a queue and its messages");
  dl->add_option("queue", del->queue, "Queue name")->required();
  dl->final_callback([&opts, del] {
    if (!Call(opts, "DELETE", "/v1/mq/queues/" + EscapePath(del->queue))) opts.exit_code = 1;
  });

  auto pub = std::make_shared<Args>();
  auto* pb = mq->add_subcommand(
      "publish", "Publish one persistent message and wait for its confirm (body \"-\": stdin)");
  pb->add_option("routing-key", pub->key, "Routing key (the queue name on the default exchange)")
      ->required();
  pb->add_option("body", pub->body, "Message body")->required();
  pb->add_option("--exchange", pub->exchange, "Exchange (default: the default exchange)");
  pb->final_callback([&opts, pub] {
    std::string body = pub->body;
    if (body == "-") body.assign(std::istreambuf_iterator<char>(std::cin), {});
    std::string target = "/v1/mq/publish?routing_key=" + EscapePath(pub->key);
    if (!pub->exchange.empty()) target += "&exchange=" + EscapePath(pub->exchange);
    auto r = Call(opts, "PUT", target, body);
    if (!r) return void(opts.exit_code = 1);
    auto v = ParseOrNull(r->body);
    if (!v.is_object() || !v.as_object().at("routed").as_bool()) {
      std::cerr << "haven: unroutable: no queue is bound for " << pub->key << "\n";
      return void(opts.exit_code = 1);
    }
  });

  auto con = std::make_shared<Args>();
  auto* cs = mq->add_subcommand("consume", "Take messages off a queue and print their bodies");
  cs->add_option("queue", con->queue, "Queue name")->required();
  cs->add_option("--count", con->count, "How many at most (1 to 1000)")->capture_default_str();
  cs->final_callback([&opts, con] {
    auto r = Call(
        opts, "PUT",
        "/v1/mq/queues/" + EscapePath(con->queue) + "/get?count=" + std::to_string(con->count));
    if (!r) return void(opts.exit_code = 1);
    auto v = ParseOrNull(r->body);
    if (!v.is_array()) return void(opts.exit_code = 1);
    for (const auto& m : v.as_array()) {
      const auto& o = m.as_object();
      std::string payload = Str(o.at("payload"));
      if (Str(o.at("payload_encoding")) == "base64") {
        auto decoded = Base64Decode(payload);
        payload = decoded.ok() ? *decoded : "";
      }
      std::cout << payload << "\n";
    }
  });
}

}  // namespace

void AddClientCommands(CLI::App& app, ClientOptions& opts) {
  app.add_option("--addr", opts.addr,
                 "Server HTTP address (default: $HAVEN_HTTP_ADDR, then http://127.0.0.1:8500)");
  AddServices(app, opts);
  AddHealth(app, opts);
  AddKv(app, opts);
  AddMq(app, opts);
}

int RunClientCommand(const CLI::App&, const ClientOptions& opts) { return opts.exit_code; }

}  // namespace haven::cli
