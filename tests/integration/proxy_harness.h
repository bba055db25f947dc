// Proxy-test helpers: child processes (haven proxy, test backends) found by their `event=listening`
// line, and a keep-alive load generator that counts failures and which backend answered.
// Header-only because the integration CMake builds only *_test.cc and harness.cc.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
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
    if (Status s = Spawn(); !s.ok()) return s;
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

  // The port of the `n`-th (from 0) address of `listeners=A,B,...` on the listening line (0 when
  // absent): the proxy lists every listener there in config order.
  int ListenerPort(size_t n) const {
    std::string log = ReadLog();
    size_t line = log.find("event=listening");
    if (line == std::string::npos) return 0;
    size_t at = log.find(" listeners=", line);
    if (at == std::string::npos) return 0;
    size_t end = log.find_first_of(" \n", at + 1);
    std::string list = log.substr(at + 11, end == std::string::npos ? end : end - at - 11);
    size_t from = 0;
    for (size_t i = 0; i < n; ++i) {
      from = list.find(',', from);
      if (from == std::string::npos) return 0;
      ++from;
    }
    size_t colon = list.find(':', from);
    size_t comma = list.find(',', from);
    if (colon == std::string::npos || (comma != std::string::npos && colon > comma)) return 0;
    return std::atoi(list.c_str() + colon + 1);
  }

  // Starts the child without waiting for anything (for a child expected to exit, see WaitExit).
  Status Spawn() {
    int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Status::IoError("open log: " + std::string(std::strerror(errno)));
    auto pid = SpawnLogged(argv_, fd);
    if (!pid.ok()) return pid.status();
    pid_ = *pid;
    return Status::Ok();
  }
  // Waits up to `deadline_ms` for the child to exit by itself (SIGKILL when it does not; then
  // neither `exited` nor `signal` is set).
  ExitInfo WaitExit(int64_t deadline_ms) {
    ExitInfo info;
    if (pid_ <= 0) return info;
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
  // Writes `text` to the file `name` in the child's own temp dir (removed with it); returns its
  // path. For files the child reads, such as a config.
  std::string WriteFile(const std::string& name, const std::string& text) {
    std::string path = dir_.path() + "/" + name;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
    return path;
  }
  // Appends arguments before Start/Spawn (e.g. a path from WriteFile).
  void AddArgs(const std::vector<std::string>& args) {
    argv_.insert(argv_.end(), args.begin(), args.end());
  }
  pid_t pid() const { return pid_; }

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
    if (pid_ <= 0) return {};
    ::kill(pid_, SIGTERM);
    return WaitExit(deadline_ms);
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

// `haven proxy --config FILE --admin 127.0.0.1:0` plus `args`, FILE holding `yaml`. Listener
// ports: ListenerPort(n); the admin port: Port("admin").
inline std::unique_ptr<ChildProcess> StartProxyWithConfig(
    const std::string& yaml, const std::vector<std::string>& args = {}) {
  auto p = std::make_unique<ChildProcess>(std::vector<std::string>{HAVEN_BINARY, "proxy"});
  std::string path = p->WriteFile("proxy.yaml", yaml);
  p->AddArgs({"--config", path, "--admin", "127.0.0.1:0"});
  p->AddArgs(args);
  Status s = p->Start();
  EXPECT_TRUE(s.ok()) << s.ToString();
  return p;
}

// How `haven proxy --config FILE` (FILE holding `yaml`) plus `args` ended, and what it printed.
struct ProxyRun {
  ExitInfo exit;
  std::string output;
  std::string config_path;
};

// Runs `haven proxy --config FILE` expecting it to exit (bad config): waits up to `deadline_ms`.
inline ProxyRun RunProxyWithConfig(const std::string& yaml,
                                   const std::vector<std::string>& args = {},
                                   int64_t deadline_ms = 5000) {
  ChildProcess p({HAVEN_BINARY, "proxy"});
  ProxyRun run;
  run.config_path = p.WriteFile("proxy.yaml", yaml);
  p.AddArgs({"--config", run.config_path});
  p.AddArgs(args);
  Status s = p.Spawn();
  EXPECT_TRUE(s.ok()) << s.ToString();
  run.exit = p.WaitExit(deadline_ms);
  run.output = p.ReadLog();
  return run;
}

// Keeps a running load going for `ms` (a bounded wait on the clock, not a sleep-and-hope).
inline void Hold(int64_t ms) {
  const int64_t until = NowMs() + ms;
  WaitFor([&] { return NowMs() >= until; }, ms + 1000, 10);
}

inline std::string Url(int port) { return "http://127.0.0.1:" + std::to_string(port); }

// One HTTP response read off a plain socket by RawExchange; a chunked body is decoded.
struct RawResponse {
  int status = 0;         // 0: no complete status line and head arrived
  std::string head;       // status line and header fields, lowercase names kept as sent
  std::string body;       // decoded
  bool chunked = false;   // the response came with Transfer-Encoding: chunked
  bool complete = false;  // the body ended where its framing said (or at close, unframed)
  bool closed = false;    // the peer closed the connection
  std::string error;      // why reading stopped early, when it did
};

namespace raw_detail {

// Waits for `events` on fd until the absolute `until_ms`; false on timeout or error.
inline bool PollUntil(int fd, short events, int64_t until_ms) {
  const int64_t left = until_ms - NowMs();
  if (left <= 0) return false;
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 60000))) > 0;
}

inline bool SendAll(int fd, std::string_view bytes, int64_t until_ms) {
  while (!bytes.empty()) {
    if (!PollUntil(fd, POLLOUT, until_ms)) return false;
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// The value of header `name` (lowercase) in `head`, case-insensitively; "" when absent.
inline std::string HeadField(const std::string& head, const std::string& name) {
  std::string lower = head;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  size_t at = lower.find("\r\n" + name + ":");
  if (at == std::string::npos) return "";
  size_t from = at + 3 + name.size();
  size_t end = lower.find("\r\n", from);
  std::string v = lower.substr(from, end - from);
  v.erase(0, v.find_first_not_of(" \t"));
  v.erase(v.find_last_not_of(" \t") + 1);
  return v;
}

// Decodes as much of a chunked body in buf[*pos..] as has arrived. Returns false on bad framing.
inline bool DecodeChunks(const std::string& buf, size_t* pos, RawResponse* r) {
  while (!r->complete) {
    size_t eol = buf.find("\r\n", *pos);
    if (eol == std::string::npos) return true;
    uint64_t size = 0;
    std::string_view line(buf.data() + *pos, eol - *pos);
    line = line.substr(0, line.find(';'));
    if (line.empty() || line.size() > 16) return false;
    for (char c : line) {
      if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
      size = size * 16 + static_cast<uint64_t>(std::isdigit(static_cast<unsigned char>(c))
                                                   ? c - '0'
                                                   : std::tolower(c) - 'a' + 10);
    }
    if (size == 0) {
      // No trailers expected: the last chunk is followed by an empty line.
      if (buf.size() < eol + 4) return true;
      r->complete = buf.compare(eol + 2, 2, "\r\n") == 0;
      *pos = eol + 4;
      return r->complete;
    }
    if (buf.size() < eol + 2 + size + 2) return true;
    r->body.append(buf, eol + 2, size);
    if (buf.compare(eol + 2 + size, 2, "\r\n") != 0) return false;
    *pos = eol + 2 + size + 2;
  }
  return true;
}

// Fills the head fields of `r` from buf[0..head_end).
inline void ParseHead(const std::string& buf, size_t head_end, RawResponse* r) {
  r->head = buf.substr(0, head_end);
  if (r->head.rfind("HTTP/1.", 0) == 0 && r->head.size() >= 12) {
    r->status = std::atoi(r->head.c_str() + 9);
  }
  r->chunked = HeadField(r->head, "transfer-encoding").find("chunked") != std::string::npos;
}

}  // namespace raw_detail

// Sends `request` as it is on a fresh connection to 127.0.0.1:port and reads one response: until
// its framing (Content-Length or chunked) ends, the peer closes, `timeout_ms` passes or more than
// `max_body` body bytes arrived. For requests a normal client would not send (chunked bodies,
// malformed framing) and for bodies larger than the HTTP client takes.
inline RawResponse RawExchange(int port, std::string_view request, int64_t timeout_ms = 5000,
                               size_t max_body = size_t{512} << 20) {
  RawResponse r;
  const int64_t until = NowMs() + timeout_ms;
  int fd = ConnectLoopback(port);
  if (fd < 0) {
    r.error = "connect: " + std::string(std::strerror(errno));
    return r;
  }
  if (!raw_detail::SendAll(fd, request, until)) r.error = "send failed or timed out";
  std::string buf;
  size_t head_end = std::string::npos;  // the body starts at head_end + 4
  size_t pos = 0;                       // chunked: decoded up to here
  int64_t content_length = -1;
  std::vector<char> chunk(256 * 1024);
  while (!r.complete && r.body.size() <= max_body) {
    if (!raw_detail::PollUntil(fd, POLLIN, until)) {
      r.error = "timed out";
      break;
    }
    ssize_t got = ::recv(fd, chunk.data(), chunk.size(), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      r.closed = true;
      if (head_end != std::string::npos && !r.chunked && content_length < 0) r.complete = true;
      if (got < 0) r.error = "recv: " + std::string(std::strerror(errno));
      break;
    }
    buf.append(chunk.data(), static_cast<size_t>(got));
    if (head_end == std::string::npos) {
      head_end = buf.find("\r\n\r\n");
      if (head_end == std::string::npos) continue;
      raw_detail::ParseHead(buf, head_end, &r);
      std::string cl = raw_detail::HeadField(r.head, "content-length");
      if (!r.chunked && !cl.empty()) content_length = std::atoll(cl.c_str());
      buf.erase(0, head_end + 4);
    }
    if (r.chunked) {
      if (!raw_detail::DecodeChunks(buf, &pos, &r)) {
        r.error = "bad chunked framing";
        break;
      }
      // Keep the undecoded tail small so a large body is not copied over and over.
      if (pos > (size_t{1} << 20)) {
        buf.erase(0, pos);
        pos = 0;
      }
    } else {
      r.body += buf;
      buf.clear();
      if (content_length >= 0 && r.body.size() >= static_cast<size_t>(content_length)) {
        r.complete = r.body.size() == static_cast<size_t>(content_length);
      }
    }
  }
  ::close(fd);
  return r;
}

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

// Threads that each make their own call (a keep-alive HTTP client, a ServiceClient call, ...) and
// run it back to back until Stop(): counts answers and failures, the slowest call of the current
// phase, and when each backend (the body of /id) last answered. For failure-transition tests.
class TimedLoad {
 public:
  // One call: the status and body of the answer, or an error.
  using Call = std::function<Result<std::pair<int, std::string>>()>;

  TimedLoad(int threads, const std::function<Call()>& make_call) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, call = make_call()] { Run(call); });
    }
  }
  ~TimedLoad() { Stop(); }
  TimedLoad(const TimedLoad&) = delete;
  TimedLoad& operator=(const TimedLoad&) = delete;

  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  int64_t ok() const { return ok_.load(); }
  int64_t failed() const { return failed_.load(); }
  std::string first_failure() const {
    std::lock_guard lock(mu_);
    return first_failure_;
  }
  // The slowest call that ended since the last TakeMaxMs (or the start), and starts a new phase.
  int64_t TakeMaxMs() { return max_ms_.exchange(0); }
  // Calls slower than `ms` (>= 50) so far, to 10 ms.
  int64_t SlowerThan(int64_t ms) const {
    std::lock_guard lock(mu_);
    int64_t n = 0;
    for (const auto& [at, count] : slow_) n += at >= ms ? count : 0;
    return n;
  }
  int64_t answers(const std::string& backend) const {
    std::lock_guard lock(mu_);
    auto it = by_backend_.find(backend);
    return it == by_backend_.end() ? 0 : it->second;
  }
  size_t backends_seen() const {
    std::lock_guard lock(mu_);
    return by_backend_.size();
  }
  // NowMs() when `backend` last answered (0: never).
  int64_t last_answer_ms(const std::string& backend) const {
    std::lock_guard lock(mu_);
    auto it = last_answer_.find(backend);
    return it == last_answer_.end() ? 0 : it->second;
  }

 private:
  void Run(const Call& call) {
    while (!stop_) {
      const int64_t start = NowMs();
      auto r = call();
      const int64_t end = NowMs();
      const int64_t took = end - start;
      int64_t prev = max_ms_.load();
      while (took > prev && !max_ms_.compare_exchange_weak(prev, took)) {
      }
      std::lock_guard lock(mu_);
      if (took >= 50) ++slow_[took / 10 * 10];
      if (r.ok() && r->first == 200) {
        ++ok_;
        ++by_backend_[r->second];
        last_answer_[r->second] = end;
        continue;
      }
      ++failed_;
      if (first_failure_.empty()) {
        first_failure_ =
            r.ok() ? std::to_string(r->first) + " " + r->second : r.status().ToString();
      }
    }
  }

  std::atomic<bool> stop_{false};
  std::atomic<int64_t> ok_{0}, failed_{0}, max_ms_{0};
  mutable std::mutex mu_;
  std::map<std::string, int64_t> by_backend_;
  std::map<std::string, int64_t> last_answer_;
  std::map<int64_t, int64_t> slow_;  // calls of 50 ms or more by latency, in 10 ms steps
  std::string first_failure_;
  std::vector<std::thread> threads_;
};

// A TimedLoad call: GET `target` through a keep-alive HTTP client to 127.0.0.1:port.
inline TimedLoad::Call HttpCall(int port, std::string target = "/id") {
  auto client = std::make_shared<net::HttpClient>(Url(port), 10000);
  return [client, target]() -> Result<std::pair<int, std::string>> {
    auto r = client->Request("GET", target);
    if (!r.ok()) return r.status();
    return std::make_pair(r->status, std::move(r->body));
  };
}

}  // namespace haven::itest
