// TCP mode: a client connection is spliced to one upstream instance of the listener's cluster,
// picked by the balancer; a failed connect fails over to another instance at once.
#pragma once

#include "proxy/io_types.h"
#include "proxy/worker_context.h"

namespace haven::proxy {

// Serves the connection until either side closes, it idles past idle_timeout, or the worker
// drains.
Task<void> ServeTcpClient(WorkerContext& w, const ListenerRuntime& listener, Socket socket);

}  // namespace haven::proxy
