// Plain HTTP answers shared by the node's APIs: a Status as its HTTP code and a text body.
#pragma once

#include <string>

#include "base/status.h"
#include "net/http_types.h"

namespace haven::node {

// 400 InvalidArgument, 404 NotFound, 409 Conflict, 413 TooLarge, 503 Unavailable, 500 I/O and
// internal errors, ...
int HttpCode(const Status& s);
// A text/plain answer; the body ends with a newline.
net::HttpResponse Text(int status, std::string body);
// The Status's message with its HTTP code.
net::HttpResponse Error(const Status& s);

}  // namespace haven::node
