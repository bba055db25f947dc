// Integration-test harness: child process control, temp dirs, deadlines and HTTP helpers.
#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "base/base64.h"
#include "net/http_client.h"
#include "net/http_server.h"
#include "net/io_runtime.h"

namespace haven::itest {

namespace fs = std::filesystem;
namespace json = boost::json;

int64_t NowMs() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

bool WaitFor(const std::function<bool()>& predicate, int64_t deadline_ms, int64_t poll_ms) {
  const int64_t until = NowMs() + deadline_ms;
  while (true) {
    if (predicate()) return true;
    if (NowMs() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
  }
}

// ---- TempDir ----

TempDir::TempDir() {
  std::string templ = "/tmp/haven-itest-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    std::cerr << "mkdtemp failed: " << std::strerror(errno) << "\n";
    std::abort();  // nothing in a test can work without its directory
  }
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

// ---- ServerProcess ----

ServerProcess::ServerProcess(std::vector<std::string> extra_args)
    : extra_args_(std::move(extra_args)),
      data_dir_(root_.path() + "/data"),
      log_path_(root_.path() + "/server.log") {
  // The log lives in the data dir's parent so a server wiping its data dir keeps the log.
  ::mkdir(data_dir_.c_str(), 0755);
}

ServerProcess::ServerProcess(ServerSpec spec) : ServerProcess(std::move(spec.extra_args)) {
  http_ = std::move(spec.http);
  node_name_ = std::move(spec.node_name);
}

ServerProcess::~ServerProcess() { (void)Kill(); }

void ServerProcess::Signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

std::string ServerProcess::base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::string ServerProcess::ReadLog() const {
  std::ifstream in(log_path_, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status ServerProcess::Spawn() {
  int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IoError("open log: " + std::string(std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  log_offset_ = static_cast<size_t>(st.st_size);

  std::vector<std::string> args = {HAVEN_BINARY, "server", "--data-dir",  data_dir_,
                                   "--http",     http_,    "--node-name", node_name_};
  // Many servers run at once: none takes AMQP's well-known port unless a test asks for one.
  if (std::find(extra_args_.begin(), extra_args_.end(), "--amqp") == extra_args_.end()) {
    args.insert(args.end(), {"--amqp", "127.0.0.1:0"});
  }
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  auto pid = SpawnLogged(std::move(args), fd);
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  port_ = 0;
  return Status::Ok();
}

Result<pid_t> SpawnLogged(std::vector<std::string> args, int log_fd) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    return Status::IoError("fork: " + std::string(std::strerror(errno)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec. Dies with the test if the test dies.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(log_fd);
  return pid;
}

Status ServerProcess::AwaitListening(int64_t deadline_ms) {
  static const std::string kMarker = "event=listening";
  static const std::string kHttp = "http=127.0.0.1:";
  std::string failure;
  bool found = WaitFor(
      [&] {
        int wstatus = 0;
        if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
          pid_ = -1;
          failure = "server exited before listening (wait status " + std::to_string(wstatus) + ")";
          return true;
        }
        std::string log = ReadLog();
        if (log.size() <= log_offset_) return false;
        std::string_view run = std::string_view(log).substr(log_offset_);
        size_t at = run.find(kMarker);
        if (at == std::string_view::npos) return false;
        size_t line_end = run.find('\n', at);
        if (line_end == std::string_view::npos) return false;  // line not complete yet
        std::string_view line = run.substr(at, line_end - at);
        size_t h = line.find(kHttp);
        if (h == std::string_view::npos) return false;
        port_ = std::atoi(std::string(line.substr(h + kHttp.size())).c_str());
        return true;
      },
      deadline_ms, 5);
  if (!failure.empty()) return Status::Unavailable(failure);
  if (!found || port_ <= 0) {
    (void)Kill();
    return Status::Unavailable("no event=listening line within " + std::to_string(deadline_ms) +
                               " ms");
  }
  return Status::Ok();
}

Status ServerProcess::Start(int64_t deadline_ms) {
  if (running()) return Status::Internal("already running");
  Status s = Spawn();
  if (!s.ok()) return s;
  return AwaitListening(deadline_ms);
}

Status ServerProcess::Kill() {
  if (!running()) return Status::Ok();
  ::kill(pid_, SIGKILL);
  int wstatus = 0;
  while (::waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return Status::Ok();
}

Result<ExitInfo> ServerProcess::Terminate(int64_t deadline_ms) {
  if (!running()) return Status::Internal("not running");
  ::kill(pid_, SIGTERM);
  int wstatus = 0;
  bool exited = WaitFor([&] { return ::waitpid(pid_, &wstatus, WNOHANG) == pid_; }, deadline_ms, 5);
  if (!exited) {
    (void)Kill();
    return Status::Unavailable("no exit within " + std::to_string(deadline_ms) +
                               " ms of SIGTERM; killed");
  }
  pid_ = -1;
  ExitInfo info;
  info.exited = WIFEXITED(wstatus);
  if (info.exited) info.code = WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) info.signal = WTERMSIG(wstatus);
  return info;
}

void ServerProcess::Reconfigure(ServerSpec spec) {
  http_ = std::move(spec.http);
  node_name_ = std::move(spec.node_name);
  extra_args_ = std::move(spec.extra_args);
}

Status ServerProcess::Restart(int64_t deadline_ms) {
  Status s = Kill();
  if (!s.ok()) return s;
  return Start(deadline_ms);
}

namespace {

// Fixed ports come from below the kernel's ephemeral range: a port picked inside it can be taken
// by any client's outgoing connection or any `:0` listener in the parallel tests between the pick
// and the child's bind (CI once lost a cluster test to exactly that). Parallel test processes
// keep off each other's picks with a lock file per port, held until the process exits.
constexpr int kFixedPortLow = 20000;
constexpr int kFixedPortHigh = 32767;
constexpr const char* kPortLockDir = "/tmp/haven-test-ports";

int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 32768;
  in >> low;
  return low;
}

bool CanBindLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// Takes the port's lock file for the rest of this process (the fd is never closed; children do
// not inherit it). False when another process holds it; true without a lock when the lock folder
// cannot be used (another user's), where the bind check alone has to do.
bool LockPort(int port) {
  if (::mkdir(kPortLockDir, 01777) == 0) ::chmod(kPortLockDir, 01777);  // umask would narrow it
  std::string path = std::string(kPortLockDir) + "/" + std::to_string(port);
  int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno == EACCES;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return false;
  }
  return true;
}

}  // namespace

Result<std::vector<int>> PickFreePorts(int count) {
  if (count < 0 || count > 64) return Status::InvalidArgument("PickFreePorts: 0 to 64 ports");
  const int high = std::min(kFixedPortHigh, EphemeralLow() - 1);
  const int span = high - kFixedPortLow + 1;
  if (span < 1000) return Status::IoError("PickFreePorts: no port range below the ephemeral one");
  static std::atomic<uint64_t> calls{0};
  uint64_t seed = static_cast<uint64_t>(::getpid()) * 7919 + calls.fetch_add(1) * 104729 +
                  static_cast<uint64_t>(NowMs());
  std::vector<int> ports;
  for (int tried = 0; tried < span && static_cast<int>(ports.size()) < count; ++tried) {
    int port = kFixedPortLow + static_cast<int>((seed + static_cast<uint64_t>(tried)) % span);
    if (LockPort(port) && CanBindLoopback(port)) ports.push_back(port);
  }
  if (static_cast<int>(ports.size()) < count) return Status::IoError("PickFreePorts: none free");
  return ports;
}

// ---- Api ----

struct Api::Impl {
  Impl(std::string url, int64_t timeout_ms) : client(std::move(url), timeout_ms) {}
  net::HttpClient client;
};

Api::Api(std::string base_url, int64_t timeout_ms)
    : impl_(std::make_unique<Impl>(std::move(base_url), timeout_ms)) {}
Api::~Api() = default;
Api::Api(Api&&) noexcept = default;
Api& Api::operator=(Api&&) noexcept = default;

Reply Api::Do(std::string_view method, std::string_view target, std::string_view body,
              const std::vector<std::pair<std::string, std::string>>& headers) {
  Reply r;
  auto res = impl_->client.Request(method, target, body, headers);
  if (!res.ok()) {
    r.body = res.status().ToString();
    return r;
  }
  r.status = res->status;
  r.body = std::move(res->body);
  if (const std::string* idx = res->Header("x-consul-index")) {
    r.index = std::strtoull(idx->c_str(), nullptr, 10);
  }
  if (const std::string* ct = res->Header("content-type")) r.content_type = *ct;
  r.headers = std::move(res->headers);
  return r;
}

std::string Reply::Header(std::string_view lowercase_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lowercase_name) return value;
  }
  return "";
}

CliResult RunCli(const std::vector<std::string>& args, int timeout_secs) {
  std::string cmd = "timeout " + std::to_string(timeout_secs) + " " + HAVEN_BINARY;
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  CliResult r;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) r.out.append(buf, n);
  int status = pclose(f);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::optional<std::map<std::string, std::string>> ReadKvTree(const std::string& url,
                                                             const std::string& prefix,
                                                             std::string_view query) {
  constexpr int64_t kReadTimeoutMs = 5000;
  Api api(url, kReadTimeoutMs);
  Reply r = api.Get("/v1/kv/" + prefix + "?recurse" + std::string(query));
  if (r.status == 404) return std::map<std::string, std::string>{};
  json::value v = ParseJson(r.body);
  if (r.status != 200 || !v.is_array()) return std::nullopt;
  std::map<std::string, std::string> found;
  for (const auto& e : v.as_array()) {
    if (!e.is_object()) continue;
    const auto* key = e.as_object().if_contains("Key");
    const auto* value = e.as_object().if_contains("Value");
    if (key == nullptr || !key->is_string()) continue;
    std::string decoded;
    if (value != nullptr && value->is_string()) {
      auto d = Base64Decode(std::string(value->as_string()));
      if (d.ok()) decoded = *d;
    }
    found[std::string(key->as_string())] = decoded;
  }
  return found;
}

// ---- JSON and metrics helpers ----

json::value ParseJson(std::string_view text) {
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec) return nullptr;
  return v;
}

std::optional<double> MetricValue(std::string_view text, std::string_view name) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.size() <= name.size() || line.substr(0, name.size()) != name) continue;
    char next = line[name.size()];
    if (next != ' ' && next != '{') continue;
    size_t sp = line.rfind(' ');
    if (sp == std::string_view::npos) continue;
    return std::strtod(std::string(line.substr(sp + 1)).c_str(), nullptr);
  }
  return std::nullopt;
}

RaftView ReadRaftView(const std::string& base_url, int64_t timeout_ms) {
  RaftView v;
  Reply r = Api(base_url, timeout_ms).Get("/metrics");
  if (!r.ok()) return v;
  auto leader = MetricValue(r.body, "haven_raft_is_leader");
  if (!leader) return v;
  v.up = true;
  v.leader = *leader == 1;
  v.leader_id = static_cast<uint64_t>(MetricValue(r.body, "haven_raft_leader_id").value_or(0));
  v.term = static_cast<uint64_t>(MetricValue(r.body, "haven_raft_term").value_or(0));
  v.commit = static_cast<uint64_t>(MetricValue(r.body, "haven_raft_commit_index").value_or(0));
  v.applied = static_cast<uint64_t>(MetricValue(r.body, "haven_raft_applied_index").value_or(0));
  return v;
}

std::string CheckStatus(Api& api, std::string_view service, std::string_view check_id) {
  Reply r = api.Get("/v1/health/checks/" + std::string(service));
  json::value v = ParseJson(r.body);
  if (!r.ok() || !v.is_array()) return "";
  for (const auto& c : v.as_array()) {
    if (!c.is_object()) continue;
    const auto* id = c.as_object().if_contains("CheckID");
    const auto* st = c.as_object().if_contains("Status");
    if (id && st && id->is_string() && st->is_string() && id->as_string() == check_id) {
      return std::string(st->as_string());
    }
  }
  return "";
}

int CatalogCount(Api& api, std::string_view service) {
  Reply r = api.Get("/v1/catalog/service/" + std::string(service));
  json::value v = ParseJson(r.body);
  if (!r.ok() || !v.is_array()) return -1;
  return static_cast<int>(v.as_array().size());
}

// ---- raw sockets ----

int ConnectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string SendRaw(int port, std::string_view bytes, int64_t timeout_ms) {
  int fd = ConnectLoopback(port);
  if (fd < 0) return "";
  // A server that stops reading must not block the test forever.
  timeval tv{static_cast<time_t>(timeout_ms / 1000),
             static_cast<suseconds_t>(timeout_ms % 1000 * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  std::string out;
  const int64_t until = NowMs() + timeout_ms;
  char buf[4096];
  while (NowMs() < until && out.size() < (1 << 20)) {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(1, until - NowMs())));
    if (n <= 0) break;
    ssize_t got = ::recv(fd, buf, sizeof buf, 0);
    if (got <= 0) break;
    out.append(buf, static_cast<size_t>(got));
  }
  ::close(fd);
  return out;
}

ListeningSocket::ListeningSocket() {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(fd_, 128) != 0 ||
      ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Close();
    return;
  }
  port_ = ntohs(addr.sin_port);
}

ListeningSocket::~ListeningSocket() { Close(); }

void ListeningSocket::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

// ---- Backend ----

struct Backend::Impl {
  net::IoRuntime runtime{1};
  std::atomic<int> status{200};
  std::atomic<int64_t> hits{0};
  std::atomic<int64_t> errors{0};
  std::unique_ptr<net::HttpServer> server;
};

Backend::Backend() : impl_(std::make_unique<Impl>()) {
  net::HttpServerOptions opts;
  opts.port = 0;
  Impl* impl = impl_.get();
  impl->server = std::make_unique<net::HttpServer>(
      impl->runtime, opts, [impl](net::HttpRequest, net::Responder respond) {
        net::HttpResponse resp;
        resp.status = impl->status.load();
        impl->hits.fetch_add(1);
        if (resp.status >= 300) impl->errors.fetch_add(1);
        resp.content_type = "text/plain";
        resp.body = "status " + std::to_string(resp.status);
        respond(std::move(resp));
      });
  impl->runtime.Start();
  start_status_ = impl->server->Start();
}

Backend::~Backend() {
  impl_->server->Stop();
  impl_->runtime.Stop();
}

int Backend::port() const { return impl_->server->port(); }
void Backend::set_status(int status) { impl_->status.store(status); }
int64_t Backend::hits() const { return impl_->hits.load(); }
int64_t Backend::errors() const { return impl_->errors.load(); }

// ---- ServerTest ----

void ServerTest::SetUp() {
  server_ = std::make_unique<ServerProcess>(ExtraArgs());
  Status s = server_->Start();
  ASSERT_TRUE(s.ok()) << s.ToString();
  api_ = std::make_unique<Api>(server_->base_url());
}

void ServerTest::TearDown() {
  if (HasFailure() && server_) {
    std::cerr << "---- server log (" << server_->log_path() << ") ----\n"
              << server_->ReadLog() << "---- end of server log ----\n";
  }
}

std::string LastLines(const std::string& text, size_t n) {
  size_t at = text.size();
  for (size_t i = 0; i <= n && at > 0; ++i) {
    at = text.rfind('\n', at - 1);
    if (at == std::string::npos) return text;
  }
  return text.substr(at + 1);
}

}  // namespace haven::itest
