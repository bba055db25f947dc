#include "cli/cluster_recover.h"

#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include "node/data_dir.h"
#include "node/raft_recover.h"
#include "node/server.h"
#include "storage/log_store.h"

namespace haven::cli {

namespace {

constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;
constexpr uint64_t kMaxNodeId = uint64_t{1} << 62;  // as `haven server --node-id` accepts

struct RecoverArgs {
  std::string data_dir;
  std::string node_id;
  std::string members;
  bool dry_run = false;
};

// Parsed flags: the node's id and the members to keep (empty for a plain dry run).
struct RecoverRequest {
  uint64_t self = 0;
  std::map<uint64_t, std::string> members;
};

int Usage(const std::string& message) {
  std::cerr << "haven cluster recover: " << message << "\n";
  return kUsage;
}

int Failed(const std::string& message) {
  std::cerr << "haven cluster recover: " << message << "\n";
  return kFailed;
}

// --members has --peers' syntax: one parser (node::ParsePeers), its messages renamed.
Result<std::map<uint64_t, std::string>> ParseMembers(const std::string& text) {
  auto parsed = node::ParsePeers(text);
  if (parsed.ok()) return parsed;
  std::string message = parsed.status().message();
  if (message.rfind("--peers", 0) == 0) message = "--members" + message.substr(7);
  return Status::InvalidArgument(message);
}

Result<RecoverRequest> ParseRequest(const RecoverArgs& args) {
  if (args.data_dir.empty()) return Status::InvalidArgument("--data-dir is required");
  RecoverRequest req;
  if (!args.node_id.empty()) {
    char* end = nullptr;
    unsigned long long id = std::strtoull(args.node_id.c_str(), &end, 10);
    if (*end != '\0' || id == 0 || id > kMaxNodeId || args.node_id[0] == '-') {
      return Status::InvalidArgument("--node-id: bad id \"" + args.node_id +
                                     "\" (ids are 1, 2, ...)");
    }
    req.self = id;
  }
  if (!args.members.empty()) {
    auto members = ParseMembers(args.members);
    if (!members.ok()) return members.status();
    req.members = std::move(*members);
  }
  if (args.dry_run && args.members.empty()) return req;  // a summary only
  if (req.self == 0) return Status::InvalidArgument("--node-id is required (this node's raft id)");
  if (req.members.empty()) {
    return Status::InvalidArgument("--members ID=HOST:PORT,... is required (the voters to keep)");
  }
  return req;
}

// OpenRocksLogStore would create a missing store: a mistyped --data-dir must not look like an
// empty node.
Result<std::unique_ptr<storage::LogStore>> OpenStore(const std::string& data_dir) {
  const std::string dir = node::RaftStoreDir(data_dir);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return Status::NotFound("no Raft store at " + dir + " (is --data-dir the server's?)");
  }
  auto store = storage::OpenRocksLogStore(dir);
  if (store.ok()) return store;
  std::string message = store.status().message();
  if (message.find("locked") != std::string::npos) {
    message = "is the server still running? Stop it first (" + message + ")";
  }
  return Status(store.status().code(), message);
}

std::string Members(const std::map<uint64_t, std::string>& members) {
  if (members.empty()) return "none";
  std::string out;
  for (const auto& [id, address] : members) {
    if (!out.empty()) out += " ";
    out += std::to_string(id) + "=" + (address.empty() ? "(address from --peers)" : address);
  }
  return out;
}

void PrintSummary(const node::RaftStoreSummary& s) {
  std::cout << "  log:         first index " << s.first_index << ", last index " << s.last_index
            << ", last term " << s.last_term << "\n"
            << "  hard state:  term " << s.term << ", vote " << s.vote << ", commit " << s.commit
            << "\n"
            << "  snapshot:    ";
  if (s.snapshot_index == 0) {
    std::cout << "none\n";
  } else {
    std::cout << "index " << s.snapshot_index << ", term " << s.snapshot_term << "\n";
  }
  std::cout << "  voters:      " << Members(s.voters) << "\n"
            << "  learners:    " << Members(s.learners) << "\n";
}

void PrintChanges(const node::RecoverReport& r) {
  std::cout << (r.dry_run ? "Would append" : "Appended") << " at term " << r.new_term << ":\n";
  for (const auto& cc : r.changes) {
    if (cc.type() == raft::pb::CONF_REMOVE) {
      std::cout << "  remove " << cc.node_id() << "\n";
    } else {
      std::cout << "  voter  " << cc.node_id() << " at " << cc.context() << "\n";
    }
  }
}

void PrintNextSteps(const node::RecoverReport& r, const std::string& data_dir) {
  if (r.dry_run) {
    std::cout << "Dry run: nothing written. Run this on every stopped survivor and recover the one "
                 "with the greatest (last term, last index): its log holds every entry any "
                 "survivor knew to be committed.\n";
    return;
  }
  std::cout << "Recovered " << data_dir << ": the whole log (up to index " << r.after.last_index
            << ") is committed and the voters are exactly the listed members.\n"
            << "Next steps:\n"
            << "  1. start this node with its usual `haven server` flags;\n"
            << "  2. start the other listed members unchanged (their data dirs as they are);\n"
            << "  3. wipe the data dirs of every removed node before it may come back (it would "
               "otherwise form a second cluster);\n"
            << "  4. add new members with `haven cluster add ID HOST:PORT --voter` and start them "
               "with --join.\n";
}

// The data dir records the raft id it was started with: --node-id defaults to it and must match.
Status ResolveSelf(const std::string& data_dir, uint64_t& self) {
  auto recorded = node::ReadRaftId(data_dir);
  if (!recorded.ok()) {
    if (recorded.status().code() != Code::kNotFound) return recorded.status();
    return Status::Ok();  // a data dir from before the id was recorded: --node-id says
  }
  if (self != 0 && self != *recorded) {
    return Status::InvalidArgument("--node-id " + std::to_string(self) + " but this data dir " +
                                   "belongs to raft member " + std::to_string(*recorded));
  }
  self = *recorded;
  return Status::Ok();
}

int RunRecover(RecoverArgs args) {
  if (args.node_id.empty() && !args.data_dir.empty()) {
    if (auto id = node::ReadRaftId(args.data_dir); id.ok()) args.node_id = std::to_string(*id);
  }
  auto req = ParseRequest(args);
  if (!req.ok()) return Usage(req.status().message());
  if (Status s = ResolveSelf(args.data_dir, req->self); !s.ok()) return Usage(s.message());
  auto store = OpenStore(args.data_dir);
  if (!store.ok()) return Failed(store.status().message());
  auto report = node::RecoverMembership(**store, req->self, req->members, args.dry_run);
  if (!report.ok()) {
    if (report.status().code() == Code::kInvalidArgument) return Usage(report.status().message());
    return Failed(report.status().message());
  }
  std::cout << "Raft store " << node::RaftStoreDir(args.data_dir) << (args.dry_run ? "" : " before")
            << ":\n";
  PrintSummary(report->before);
  if (!report->changes.empty()) PrintChanges(*report);
  if (!args.dry_run) {
    std::cout << "After:\n";
    PrintSummary(report->after);
  }
  PrintNextSteps(*report, args.data_dir);
  return kOk;
}

}  // namespace

void AddClusterRecoverCommand(CLI::App& cluster_app, ClientOptions& opts) {
  auto args = std::make_shared<RecoverArgs>();
  auto* r = cluster_app.add_subcommand(
      "recover",
      "OFFLINE, on a stopped survivor: make --members the voters after a majority was lost for "
      "good (see docs/cluster.md)");
  r->add_option("--data-dir", args->data_dir, "The stopped server's data directory");
  r->add_option("--node-id", args->node_id,
                "This node's raft id (default: the id its data dir was started with)");
  r->add_option("--members", args->members,
                "The voters to keep, ID=HOST:PORT,... (this node included; current members only)");
  r->add_flag("--dry-run", args->dry_run,
              "Print what the store holds (and the plan); write nothing");
  r->final_callback([&opts, args] { opts.exit_code = RunRecover(*args); });
}

}  // namespace haven::cli
