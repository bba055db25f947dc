#include "cli/cluster_commands.h"
#include "cli/cluster_recover.h"

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "base/duration.h"
#include "net/http_client.h"

namespace haven::cli {

namespace json = boost::json;

namespace {

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;
constexpr int64_t kRequestTimeoutMs = 15'000;  // above the server's 10 s transfer wait
constexpr int64_t kPollEveryMs = 200;

std::string BaseUrl(std::string addr) {
  if (addr.find("://") == std::string::npos) addr = "http://" + addr;
  while (!addr.empty() && addr.back() == '/') addr.pop_back();
  return addr;
}

// One request; prints the failure (the server's message says which node leads when this one does
// not) and returns nullopt unless the answer is 2xx.
std::optional<net::HttpClientResult> Call(const ClientOptions& opts, std::string_view method,
                                          const std::string& target, bool quiet = false) {
  net::HttpClient client(BaseUrl(opts.addr), kRequestTimeoutMs);
  auto r = client.Request(method, target);
  if (!r.ok()) {
    if (!quiet) std::cerr << "haven cluster: " << r.status().message() << "\n";
    return std::nullopt;
  }
  if (r->status / 100 == 2) return *r;
  if (!quiet) {
    std::string body = r->body;
    while (!body.empty() && body.back() == '\n') body.pop_back();
    std::cerr << "haven cluster: " << method << " " << target << ": HTTP " << r->status << ": "
              << body << "\n";
  }
  return std::nullopt;
}

std::string Str(const json::value& v) { return v.is_string() ? std::string(v.as_string()) : ""; }

uint64_t Uint(const json::value& v) {
  if (v.is_uint64()) return v.as_uint64();
  if (v.is_int64() && v.as_int64() >= 0) return static_cast<uint64_t>(v.as_int64());
  return 0;
}

struct Member {
  std::string id, address;
  bool leader = false, voter = false;
  uint64_t match = 0;
};

struct Configuration {
  std::vector<Member> members;
  uint64_t commit = 0;
};

std::optional<Configuration> ParseConfiguration(const std::string& body) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object() || !v.as_object().contains("Servers") || !v.at("Servers").is_array()) {
    return std::nullopt;
  }
  Configuration c;
  if (const auto* ci = v.as_object().if_contains("CommitIndex")) c.commit = Uint(*ci);
  for (const auto& s : v.at("Servers").as_array()) {
    if (!s.is_object()) continue;
    const auto& o = s.as_object();
    Member m;
    if (const auto* x = o.if_contains("ID")) m.id = Str(*x);
    if (const auto* x = o.if_contains("Address")) m.address = Str(*x);
    if (const auto* x = o.if_contains("Leader")) m.leader = x->is_bool() && x->as_bool();
    if (const auto* x = o.if_contains("Voter")) m.voter = x->is_bool() && x->as_bool();
    if (const auto* x = o.if_contains("MatchIndex")) m.match = Uint(*x);
    c.members.push_back(std::move(m));
  }
  return c;
}

std::optional<Configuration> GetConfiguration(const ClientOptions& opts, bool quiet = false) {
  auto r = Call(opts, "GET", "/v1/operator/raft/configuration", quiet);
  if (!r) return std::nullopt;
  auto c = ParseConfiguration(r->body);
  if (!c && !quiet) std::cerr << "haven cluster: unexpected configuration answer\n";
  return c;
}

// A raft member id as --node-id takes it: 1 .. 2^62.
bool ValidId(const std::string& s) {
  if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  uint64_t v = std::stoull(s);
  return v >= 1 && v <= (uint64_t{1} << 62);
}

bool ValidHostPort(const std::string& s) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0 || s.size() > 256) return false;
  std::string port = s.substr(colon + 1);
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  int p = std::stoi(port);
  return p >= 1 && p <= 65535;
}

int Usage(const std::string& message) {
  std::cerr << "haven cluster: " << message << "\n";
  return kUsage;
}

int RunStatus(const ClientOptions& opts) {
  auto c = GetConfiguration(opts);
  if (!c) return kFailed;
  std::cout << fmt::format("{:<8} {:<28} {}\n", "ID", "ADDRESS", "ROLE");
  for (const auto& m : c->members) {
    const char* role = m.leader ? "leader" : (m.voter ? "follower" : "learner");
    std::cout << fmt::format("{:<8} {:<28} {}\n", m.id, m.address, role);
  }
  return kOk;
}

// Polls the leader's configuration until `id` has replicated what was committed when we looked.
bool WaitCaughtUp(const ClientOptions& opts, const std::string& id, int64_t timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto c = GetConfiguration(opts, /*quiet=*/true)) {
      for (const auto& m : c->members) {
        if (m.id == id && c->commit > 0 && m.match >= c->commit) return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(kPollEveryMs));
  }
  return false;
}

struct AddArgs {
  std::string id, address, timeout = "30s";
  bool voter = false;
};

int RunAdd(const ClientOptions& opts, const AddArgs& a) {
  if (!ValidId(a.id)) return Usage("bad ID \"" + a.id + "\": expected 1 .. 2^62");
  if (!ValidHostPort(a.address)) return Usage("bad address \"" + a.address + "\": HOST:PORT");
  auto timeout = ParseDurationMs(a.timeout);
  if (!timeout.ok() || *timeout < 1000 || *timeout > 3'600'000) {
    return Usage("--timeout must be a duration from 1s to 1h");
  }
  std::string target = "/v1/operator/raft/peer?id=" + a.id + "&address=" + a.address;
  auto cfg = GetConfiguration(opts);
  if (!cfg) return kFailed;
  bool already_voter = false;
  for (const auto& m : cfg->members) already_voter |= m.id == a.id && m.voter;
  if (already_voter) {
    std::cout << "node " << a.id << " is already a voter\n";
    return kOk;
  }
  if (!Call(opts, "POST", target)) return kFailed;
  std::cout << "node " << a.id << " added as a learner at " << a.address << "\n";
  if (!a.voter) return kOk;
  if (!WaitCaughtUp(opts, a.id, *timeout)) {
    std::cerr << "haven cluster: node " << a.id << " did not catch up within " << a.timeout
              << "; it stays a learner (promote later with: haven cluster add " << a.id << " "
              << a.address << " --voter)\n";
    return kFailed;
  }
  if (!Call(opts, "POST", target + "&voter=true")) return kFailed;
  std::cout << "node " << a.id << " promoted to voter\n";
  return kOk;
}

int RunRemove(const ClientOptions& opts, const std::string& id) {
  if (!ValidId(id)) return Usage("bad ID \"" + id + "\": expected 1 .. 2^62");
  if (!Call(opts, "DELETE", "/v1/operator/raft/peer?id=" + id)) return kFailed;
  std::cout << "node " << id << " removed\n";
  return kOk;
}

int RunUpdate(const ClientOptions& opts, const std::string& id, const std::string& address) {
  if (!ValidId(id)) return Usage("bad ID \"" + id + "\": expected 1 .. 2^62");
  if (!ValidHostPort(address)) return Usage("bad address \"" + address + "\": HOST:PORT");
  if (!Call(opts, "POST", "/v1/operator/raft/peer/address?id=" + id + "&address=" + address)) {
    return kFailed;
  }
  std::cout << "node " << id << " is now at " << address << "\n";
  return kOk;
}

int RunTransfer(const ClientOptions& opts, const std::string& id) {
  if (!id.empty() && !ValidId(id)) return Usage("bad ID \"" + id + "\": expected 1 .. 2^62");
  std::string target = "/v1/operator/raft/transfer-leader";
  if (!id.empty()) target += "?id=" + id;
  if (!Call(opts, "POST", target)) return kFailed;
  auto c = GetConfiguration(opts, /*quiet=*/true);
  std::string leader = "?";
  if (c) {
    for (const auto& m : c->members) {
      if (m.leader) leader = m.id;
    }
  }
  std::cout << "leadership transferred; leader is now " << leader << "\n";
  return kOk;
}

}  // namespace

void AddClusterCommands(CLI::App& app, ClientOptions& opts) {
  auto* cluster = app.add_subcommand(
      "cluster", "Raft membership: status, add, remove, update, transfer, recover");
  cluster->require_subcommand(1);

  cluster->add_subcommand("status", "List the members with their address and role")
      ->final_callback([&opts] { opts.exit_code = RunStatus(opts); });

  auto add = std::make_shared<AddArgs>();
  auto* a = cluster->add_subcommand(
      "add", "Add a member as a learner; with --voter wait until it caught up, then promote it");
  a->add_option("id", add->id, "Raft id of the new member (its --node-id)")->required();
  a->add_option("address", add->address, "Its raft address HOST:PORT (its --raft)")->required();
  a->add_flag("--voter", add->voter, "Promote it to voter once it has caught up");
  a->add_option("--timeout", add->timeout, "How long to wait for it to catch up")
      ->capture_default_str();
  a->final_callback([&opts, add] { opts.exit_code = RunAdd(opts, *add); });

  auto remove_id = std::make_shared<std::string>();
  auto* r = cluster->add_subcommand("remove", "Remove a member (voter or learner)");
  r->add_option("id", *remove_id, "Raft id of the member")->required();
  r->final_callback([&opts, remove_id] { opts.exit_code = RunRemove(opts, *remove_id); });

  auto update = std::make_shared<std::pair<std::string, std::string>>();
  auto* u = cluster->add_subcommand(
      "update", "Record a member's new raft address (a node restarted elsewhere keeps its id)");
  u->add_option("id", update->first, "Raft id of the member")->required();
  u->add_option("address", update->second, "Its new raft address HOST:PORT (its --raft)")
      ->required();
  u->final_callback(
      [&opts, update] { opts.exit_code = RunUpdate(opts, update->first, update->second); });

  auto to = std::make_shared<std::string>();
  auto* t = cluster->add_subcommand("transfer-leader",
                                    "Move leadership to ID (default: the most caught-up voter)");
  t->add_option("id", *to, "Raft id of the new leader");
  t->final_callback([&opts, to] { opts.exit_code = RunTransfer(opts, *to); });
  AddClusterRecoverCommand(*cluster, opts);
}

}  // namespace haven::cli
