// Integration-test harness: a real `haven server` child process, temp dirs, deadlines, HTTP
// helpers.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <boost/json.hpp>

#include "base/status.h"

namespace haven::itest {

// A directory made with mkdtemp under /tmp, removed with everything in it when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Polls `predicate` every `poll_ms` until it is true or `deadline_ms` has passed. Returns whether
// it became true. The one way tests wait: never a fixed sleep.
bool WaitFor(const std::function<bool()>& predicate, int64_t deadline_ms, int64_t poll_ms = 5);

// Milliseconds on a monotonic clock, for measuring how long something took.
int64_t NowMs();

// Starts argv[0] with argv, stdout and stderr going to the open file `log_fd` (closed here), as a
// child that dies with the test process. Returns its pid.
Result<pid_t> SpawnLogged(std::vector<std::string> argv, int log_fd);

// How a ServerProcess ended (from waitpid).
struct ExitInfo {
  bool exited = false;  // normal exit (then `code` is set), otherwise killed by `signal`
  int code = -1;
  int signal = 0;
};

// Where a ServerProcess listens and what it is called: a cluster member needs fixed addresses so
// that it restarts where its peers know it.
struct ServerSpec {
  std::string http = "127.0.0.1:0";  // --http (port 0: ephemeral, changes on restart)
  std::string node_name = "test-node";
  std::vector<std::string> extra_args;  // appended after --node-name
};

// Ports on 127.0.0.1 for children that must listen at fixed ports (cluster peers, restarts at the
// same address): free when picked, outside the kernel's ephemeral range and reserved against the
// other test processes until this one exits. At most 64.
Result<std::vector<int>> PickFreePorts(int count);

// A `haven server` child: started with fork/exec on an ephemeral port, its stdout/stderr in a log
// file next to (not inside) its data dir. Killed by PID in the destructor, so a failing test never
// leaves a server behind.
class ServerProcess {
 public:
  // `extra_args` are appended to: server --data-dir DIR --http 127.0.0.1:0 --node-name test-node.
  explicit ServerProcess(std::vector<std::string> extra_args = {});
  // server --data-dir DIR --http SPEC.http --node-name SPEC.node_name SPEC.extra_args...
  explicit ServerProcess(ServerSpec spec);
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Starts the child and waits (deadline) for its `event=listening http=127.0.0.1:PORT` line.
  Status Start(int64_t deadline_ms = 15000);
  // SIGKILL and reap. A no-op when not running.
  Status Kill();
  // SIGTERM and wait up to `deadline_ms` for the exit; SIGKILLs and fails when it does not exit.
  Result<ExitInfo> Terminate(int64_t deadline_ms = 10000);
  // Starts again on the same data dir (the port changes unless fixed by ServerSpec::http). Kills a
  // running child first.
  Status Restart(int64_t deadline_ms = 15000);
  // Sends `sig` (e.g. SIGSTOP/SIGCONT to pause and resume). A no-op when not running.
  void Signal(int sig);
  // The flags of the next Start/Restart (the data dir stays), e.g. to move a member to new
  // addresses. Does not touch a running child.
  void Reconfigure(ServerSpec spec);

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  std::string base_url() const;  // "http://127.0.0.1:PORT"
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log_path() const { return log_path_; }
  std::string ReadLog() const;

 private:
  Status Spawn();
  Status AwaitListening(int64_t deadline_ms);

  std::vector<std::string> extra_args_;
  std::string http_ = "127.0.0.1:0";
  std::string node_name_ = "test-node";
  TempDir root_;          // holds data/ and server.log
  std::string data_dir_;  // root_/data
  std::string log_path_;  // root_/server.log
  pid_t pid_ = -1;
  int port_ = 0;
  size_t log_offset_ = 0;  // where the current run's output starts in the log file
};

// One HTTP response, flattened so tests need not know the client's types. status 0 = transport
// error (then `body` holds the message).
struct Reply {
  int status = 0;
  std::string body;
  uint64_t index = 0;  // X-Consul-Index, 0 when absent
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercase
  bool ok() const { return status == 200; }
  // The value of header `lowercase_name`, "" when absent.
  std::string Header(std::string_view lowercase_name) const;
};

// A thin wrapper around haven::net::HttpClient for one server.
class Api {
 public:
  explicit Api(std::string base_url, int64_t timeout_ms = 15000);
  ~Api();
  Api(Api&&) noexcept;
  Api& operator=(Api&&) noexcept;

  Reply Do(std::string_view method, std::string_view target, std::string_view body = {},
           const std::vector<std::pair<std::string, std::string>>& headers = {});
  Reply Get(std::string_view target) { return Do("GET", target); }
  Reply Put(std::string_view target, std::string_view body = {}) { return Do("PUT", target, body); }
  Reply Delete(std::string_view target) { return Do("DELETE", target); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What one `haven ...` CLI run printed (stdout and stderr) and its exit code (-1: it did not exit).
struct CliResult {
  int code = -1;
  std::string out;
};
// Runs the haven binary with `args`, bounded by timeout(1) (its own requests time out first).
CliResult RunCli(const std::vector<std::string>& args, int timeout_secs = 60);

// Key -> decoded value of everything under `prefix` on the server at `url` (`query` is added to
// ?recurse, e.g. "&stale" for that node's own replica); nullopt when it did not answer with a JSON
// array or a 404 (nothing there yet).
// The last n lines of text (a process log), to show with a failure.
std::string LastLines(const std::string& text, size_t n);

std::optional<std::map<std::string, std::string>> ReadKvTree(const std::string& url,
                                                             const std::string& prefix,
                                                             std::string_view query = "");

// Parses JSON; returns a null value on bad input (the test then fails on what it expected).
boost::json::value ParseJson(std::string_view text);

// The value of a Prometheus sample `name` (first line starting with "name " or "name{"), if
// present.
std::optional<double> MetricValue(std::string_view metrics_text, std::string_view name);

// What one node's /metrics says about Raft; `up` is false when it did not answer.
struct RaftView {
  bool up = false;
  bool leader = false;
  uint64_t leader_id = 0;
  uint64_t term = 0;
  uint64_t commit = 0;
  uint64_t applied = 0;
};

// Reads node `base_url`'s RaftView from its /metrics within `timeout_ms`.
RaftView ReadRaftView(const std::string& base_url, int64_t timeout_ms);

// Health status of check `check_id` for service `service` from /v1/health/checks/SERVICE, or ""
// when the check is absent.
std::string CheckStatus(Api& api, std::string_view service, std::string_view check_id);

// Number of instances of `service` in /v1/catalog/service/SERVICE (-1 on an error).
int CatalogCount(Api& api, std::string_view service);

// Sends raw bytes to 127.0.0.1:port and reads until close or `timeout_ms`. For garbage-input tests.
std::string SendRaw(int port, std::string_view bytes, int64_t timeout_ms = 2000);
// A blocking TCP socket connected to 127.0.0.1:port, or -1.
int ConnectLoopback(int port);

// A TCP socket listening on 127.0.0.1 (ephemeral port) that never accepts: enough for a TCP check.
class ListeningSocket {
 public:
  ListeningSocket();
  ~ListeningSocket();
  ListeningSocket(const ListeningSocket&) = delete;
  ListeningSocket& operator=(const ListeningSocket&) = delete;
  int port() const { return port_; }
  bool ok() const { return fd_ >= 0; }
  void Close();

 private:
  int fd_ = -1;
  int port_ = 0;
};

// An in-process HTTP backend (haven::net::HttpServer on an ephemeral port) for HTTP checks: it
// answers every request with the status set by the test and counts the requests.
class Backend {
 public:
  Backend();
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;
  const Status& start_status() const { return start_status_; }
  int port() const;
  void set_status(int status);
  int64_t hits() const;
  int64_t errors() const;  // requests answered with a status >= 300

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Status start_status_;
};

// A fixture with one started server and an Api to it; prints the server log when a test failed.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  // Extra `haven server` flags for this fixture.
  virtual std::vector<std::string> ExtraArgs() { return {}; }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Api> api_;
};

}  // namespace haven::itest
