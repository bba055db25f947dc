// HttpSession: one HTTP/1.1 client connection of a proxy worker. Reads each request whole (head
// and body, bounded), routes it, forwards it with failover and retries (Forward), and streams the
// chosen response back. Keep-alive and pipelined requests are served in order.
#pragma once

#include "proxy/io_types.h"
#include "proxy/worker_context.h"

namespace haven::proxy {

// Serves the connection until it closes, fails or the worker drains.
Task<void> ServeHttpClient(WorkerContext& w, const ListenerRuntime& listener, Socket socket);

}  // namespace haven::proxy
