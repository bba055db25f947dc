#include "proxy/socket_deadline.h"

namespace haven::proxy {

struct SocketDeadline::State {
  explicit State(Socket& s) : timer(s.get_executor()), socket(&s) {}
  Timer timer;
  Socket* socket;  // nullptr once the owner is gone
  SteadyTime deadline = SteadyTime::max();
  SteadyTime armed = SteadyTime::max();  // when the pending wait fires; max = none pending
  uint64_t generation = 0;               // tells a superseded wait's handler apart
  bool expired = false;
};

namespace {

void Arm(const std::shared_ptr<SocketDeadline::State>& st, SteadyTime at) {
  st->armed = at;
  uint64_t gen = ++st->generation;
  st->timer.expires_at(at);
  st->timer.async_wait([st, gen](const error_code&) {
    if (gen != st->generation || st->socket == nullptr) return;  // superseded or owner gone
    st->armed = SteadyTime::max();
    if (st->deadline == SteadyTime::max()) return;
    if (SteadyNow() < st->deadline) {
      Arm(st, st->deadline);
      return;
    }
    st->expired = true;
    error_code ignored;
    st->socket->cancel(ignored);
  });
}

}  // namespace

SocketDeadline::SocketDeadline(Socket& socket) : state_(std::make_shared<State>(socket)) {}

SocketDeadline::~SocketDeadline() {
  state_->socket = nullptr;
  ++state_->generation;
  try {
    state_->timer.cancel();
  } catch (const boost::system::system_error&) {  // cannot fail for a timer; never throw here
  }
}

void SocketDeadline::ExpireAt(SteadyTime t) {
  state_->expired = false;
  state_->deadline = t;
  if (t < state_->armed) Arm(state_, t);
}

void SocketDeadline::Clear() { state_->deadline = SteadyTime::max(); }

bool SocketDeadline::expired() const { return state_->expired; }

}  // namespace haven::proxy
