// Proxy-test helpers: child processes (haven proxy, test backends) found by their `event=listening`
// line, and a keep-alive load generator that counts failures and which backend answered.
// Header-only because the integration CMake builds only *_test.cc and harness.cc.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "net/http_client.h"

namespace haven::itest {

// A child program started with fork/exec, its output in a log file; killed by PID when destroyed.
class ChildProcess {
 public:
  explicit ChildProcess(std::vector<std::string> argv) : argv_(std::move(argv)) {
    log_path_ = dir_.path() + "/child.log";
  }
  ~ChildProcess() { Kill(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts the child and waits for its `event=listening` line.
  Status Start(int64_t deadline_ms = 10000) {
    int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Status::IoError("open log: " + std::string(std::strerror(errno)));
    auto pid = SpawnLogged(argv_, fd);
    if (!pid.ok()) return pid.status();
    pid_ = *pid;
    bool up = WaitFor([&] { return ReadLog().find("event=listening") != std::string::npos; },
                      deadline_ms);
    if (!up) return Status::Unavailable("no event=listening line; log:\n" + ReadLog());
    return Status::Ok();
  }

  // The port of `key=127.0.0.1:PORT` on the listening line (0 when absent).
  int Port(const std::string& key) const {
    std::string log = ReadLog();
    size_t line = log.find("event=listening");
    if (line == std::string::npos) return 0;
    size_t at = log.find(" " + key + "=", line);
    if (at == std::string::npos) return 0;
    size_t colon = log.find(':', at);
    return colon == std::string::npos ? 0 : std::atoi(log.c_str() + colon + 1);
  }

  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // SIGKILL and reap; a no-op when not running.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  // SIGTERM, then waits up to deadline_ms for the exit (SIGKILL when it does not come).
  ExitInfo Terminate(int64_t deadline_ms) {
    ExitInfo info;
    if (pid_ <= 0) return info;
    ::kill(pid_, SIGTERM);
    int status = 0;
    bool done = WaitFor([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, deadline_ms);
    if (!done) {
      Kill();
      return info;
    }
    pid_ = -1;
    info.exited = WIFEXITED(status);
    info.code = info.exited ? WEXITSTATUS(status) : -1;
    info.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    return info;
  }
  bool running() const { return pid_ > 0; }
  std::string ReadLog() const {
    std::ifstream in(log_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::vector<std::string> argv_;
  TempDir dir_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// A test backend process (tests/integration/backend_main.cc) named `name`, on `port` (0:
// ephemeral; a given port restarts a killed backend where the proxy knows it).
inline std::unique_ptr<ChildProcess> StartBackend(const std::string& name, int port = 0) {
  auto b = std::make_unique<ChildProcess>(
      std::vector<std::string>{HAVEN_TEST_BACKEND, name, std::to_string(port)});
  Status s = b->Start();
  EXPECT_TRUE(s.ok()) << s.ToString();
  return b;
}

// `haven proxy --listen 127.0.0.1:0 --admin 127.0.0.1:0` plus `args`.
inline std::unique_ptr<ChildProcess> StartProxy(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {HAVEN_BINARY,  "proxy",   "--listen",
                                   "127.0.0.1:0", "--admin", "127.0.0.1:0"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = std::make_unique<ChildProcess>(argv);
  Status s = p->Start();
  EXPECT_TRUE(s.ok()) << s.ToString();
  return p;
}

inline std::string Url(int port) { return "http://127.0.0.1:" + std::to_string(port); }

// Threads of keep-alive clients sending GET `target` until Stop(); counts every answer.
class Load {
 public:
  Load(int port, int threads, std::string target = "/id") {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, port, target] { Run(port, target); });
    }
  }
  ~Load() { Stop(); }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  int64_t ok() const { return ok_.load(); }
  int64_t failed() const { return failed_.load(); }
  // Answers per backend name (the body of /id).
  std::map<std::string, int64_t> by_backend() const {
    std::lock_guard lock(mu_);
    return by_backend_;
  }
  std::string first_failure() const {
    std::lock_guard lock(mu_);
    return first_failure_;
  }

 private:
  void Run(int port, const std::string& target) {
    net::HttpClient client(Url(port), 10000);
    while (!stop_) {
      auto r = client.Request("GET", target);
      std::lock_guard lock(mu_);
      if (r.ok() && r->status == 200) {
        ++ok_;
        ++by_backend_[r->body];
      } else {
        ++failed_;
        if (first_failure_.empty()) {
          first_failure_ =
              r.ok() ? std::to_string(r->status) + " " + r->body : r.status().ToString();
        }
      }
    }
  }

  std::atomic<bool> stop_{false};
  std::atomic<int64_t> ok_{0}, failed_{0};
  mutable std::mutex mu_;
  std::map<std::string, int64_t> by_backend_;
  std::string first_failure_;
  std::vector<std::thread> threads_;
};

}  // namespace haven::itest
