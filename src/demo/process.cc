#include "demo/process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <fstream>
#include <thread>

#include "base/proc_status.h"

namespace haven::demo {

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Reaps `pid` without blocking; true when it is gone (reaped now, or not our child any more).
bool TryReap(pid_t pid) {
  int status = 0;
  pid_t r = waitpid(pid, &status, WNOHANG);
  return r == pid || (r < 0 && errno == ECHILD);
}

}  // namespace

Children::Children(std::string pids_path) : pids_path_(std::move(pids_path)) {}

Children::~Children() { KillAll(0); }

Result<pid_t> Children::Spawn(const std::string& role, const std::vector<std::string>& argv,
                              const std::string& log_path) {
  if (argv.empty()) return Status::InvalidArgument("empty argv");
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Status::IoError("cannot open " + log_path);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t group = pgid_;
  pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return Status::IoError("fork failed");
  }
  if (pid == 0) {
    setpgid(0, group);  // 0: this child starts the group
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  close(log_fd);
  setpgid(pid, group == 0 ? pid : group);  // also here, so no race with the child's own call
  if (pgid_ == 0) pgid_ = pid;
  live_[pid] = role;
  std::ofstream f(pids_path_, std::ios::app);
  f << role << " " << pid << "\n";
  return pid;
}

void Children::Signal(pid_t pid, int sig) {
  if (live_.count(pid)) kill(pid, sig);
}

bool Children::WaitExit(pid_t pid, int64_t deadline_ms) {
  if (!live_.count(pid)) return true;
  const int64_t end = NowMs() + deadline_ms;
  while (true) {
    if (TryReap(pid)) {
      live_.erase(pid);
      return true;
    }
    if (NowMs() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polling waitpid with a deadline
  }
}

void Children::Kill(pid_t pid) {
  if (!live_.count(pid)) return;
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);  // SIGKILL cannot be caught: this returns promptly
  live_.erase(pid);
}

void Children::Terminate(const std::vector<pid_t>& pids, int64_t grace_ms) {
  std::vector<pid_t> targets = pids.empty() ? live() : pids;
  if (grace_ms > 0) {
    for (pid_t p : targets) Signal(p, SIGTERM);
    const int64_t end = NowMs() + grace_ms;
    for (pid_t p : targets) WaitExit(p, std::max<int64_t>(0, end - NowMs()));
  }
  for (pid_t p : targets) Kill(p);
  // Anything the children started; only while a child of ours was alive, so that the group id
  // cannot have been reused by someone else's processes.
  if (pids.empty() && pgid_ > 0 && !targets.empty()) kill(-pgid_, SIGKILL);
}

std::vector<std::string> Children::ReapExited() {
  std::vector<std::string> roles;
  for (auto it = live_.begin(); it != live_.end();) {
    if (TryReap(it->first)) {
      roles.push_back(it->second);
      it = live_.erase(it);
    } else {
      ++it;
    }
  }
  return roles;
}

std::vector<pid_t> Children::live() const {
  std::vector<pid_t> out;
  for (const auto& [pid, role] : live_) out.push_back(pid);
  return out;
}

int64_t Children::TotalRssKb() const {
  int64_t total = std::max<int64_t>(0, ProcStatusKiB(getpid(), "VmRSS"));
  for (const auto& [pid, role] : live_) total += std::max<int64_t>(0, ProcStatusKiB(pid, "VmRSS"));
  return total;
}

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("haven");
}

Result<std::vector<int>> FreePorts(int count) {
  if (count < 0 || count > 64) return Status::InvalidArgument("at most 64 ports");
  std::vector<int> fds;
  std::vector<int> ports;
  Status status;
  for (int i = 0; i < count; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      if (fd >= 0) close(fd);
      status = Status::IoError("cannot bind a free port");
      break;
    }
    fds.push_back(fd);
    ports.push_back(ntohs(a.sin_port));
  }
  for (int fd : fds) close(fd);
  if (!status.ok()) return status;
  return ports;
}

}  // namespace haven::demo
