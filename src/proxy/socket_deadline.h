// SocketDeadline: a deadline on a socket's pending operations that costs a field write to move
// later. The connection's one timer wakes at the armed time; if the deadline moved later meanwhile
// it re-arms, otherwise it cancels the socket's operations (they complete with operation_aborted
// and expired() says it was the deadline). Per-request deadlines on keep-alive connections thus
// touch the timer queue about once per timeout period instead of twice per request.
#pragma once

#include <memory>

#include "proxy/io_types.h"

namespace haven::proxy {

class SocketDeadline {
 public:
  explicit SocketDeadline(Socket& socket);
  ~SocketDeadline();  // the socket is not touched afterwards
  SocketDeadline(const SocketDeadline&) = delete;
  SocketDeadline& operator=(const SocketDeadline&) = delete;

  void ExpireAt(SteadyTime t);  // also clears expired()
  void ExpireAfterMs(int64_t ms) { ExpireAt(SteadyAfterMs(ms)); }
  void Clear();  // no deadline (e.g. an idle pooled connection)
  bool expired() const;

  struct State;  // shared with the timer's handler, which may outlive this object

 private:
  std::shared_ptr<State> state_;
};

}  // namespace haven::proxy
