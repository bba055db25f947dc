// haven-example-client: calls a service N times through haven::client::ServiceClient and prints
// which instance answered each call and where the client failed over.
#include <cstdio>
#include <map>
#include <string>

#include <CLI/CLI.hpp>

#include "base/log.h"
#include "client/service_client.h"

namespace {

struct Args {
  std::string registry = "http://127.0.0.1:8500";
  std::string service;
  std::string target = "/";
  std::string lb = "least_request";
  int requests = 10;
};

// Prints one line per call; returns the instance that answered ("" when the call failed).
std::string CallOnce(haven::client::ServiceClient& client, const Args& args, int n) {
  haven::client::Request req;
  req.target = args.target;
  auto r = client.Call(args.service, req);
  if (!r.ok()) {
    std::printf("#%d error: %s\n", n, r.status().ToString().c_str());
    return "";
  }
  std::printf("#%d %d from %s%s\n", n, r->status, r->endpoint_id.c_str(),
              r->attempts > 1
                  ? (" after " + std::to_string(r->attempts - 1) + " failover(s)").c_str()
                  : "");
  return r->endpoint_id;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Calls a service registered in haven N times, failing over between its instances"};
  Args args;
  app.add_option("--registry", args.registry, "Registry URL")->capture_default_str();
  app.add_option("--service", args.service, "Service name")->required();
  app.add_option("--requests", args.requests, "Number of calls")
      ->check(CLI::Range(1, 1'000'000))
      ->capture_default_str();
  app.add_option("--target", args.target, "Request path")->capture_default_str();
  app.add_option("--lb", args.lb, "round_robin|least_request|ewma|ring_hash|random")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  haven::log::Init();
  haven::log::SetLevel("warn");

  auto policy = haven::lb::ParsePolicy(args.lb);
  if (!policy.ok()) {
    std::fprintf(stderr, "%s\n", policy.status().ToString().c_str());
    return 2;
  }
  haven::client::ClientOptions opts;
  opts.registry = args.registry;
  opts.policy = *policy;
  haven::client::ServiceClient client(opts);

  std::map<std::string, int> per_instance;
  int failed = 0;
  for (int i = 1; i <= args.requests; ++i) {
    std::string id = CallOnce(client, args, i);
    if (id.empty()) {
      ++failed;
    } else {
      ++per_instance[id];
    }
  }
  for (const auto& [id, count] : per_instance) std::printf("%s: %d calls\n", id.c_str(), count);
  std::printf("%d calls, %d failed\n", args.requests, failed);
  return failed == 0 ? 0 : 1;
}
