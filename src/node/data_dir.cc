#include "node/data_dir.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "base/uuid.h"

namespace haven::node {

namespace {

// Writes `text` to `path` through a temporary file and a rename: never half a file.
Status WriteFileAtomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text << "\n";
    if (!out.flush()) return Status::IoError("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return Status::IoError("cannot create " + path);
  return Status::Ok();
}

std::string RaftIdPath(const std::string& data_dir) { return data_dir + "/raft-id"; }

}  // namespace

std::string RaftStoreDir(const std::string& data_dir) { return data_dir + "/raft"; }

Result<std::string> LoadOrCreateNodeId(const std::string& data_dir) {
  std::string path = data_dir + "/node-id";
  if (std::ifstream in(path); in) {
    std::string id;
    std::getline(in, id);
    if (id.size() == 36) return id;
    return Status::InvalidArgument(path + " does not hold a UUID; delete it to make a new one");
  }
  std::string id = NewUuid();
  if (Status s = WriteFileAtomically(path, id); !s.ok()) return s;
  return id;
}

Result<uint64_t> ReadRaftId(const std::string& data_dir) {
  std::string path = RaftIdPath(data_dir);
  std::ifstream in(path);
  if (!in) return Status::NotFound("no " + path);
  std::string text;
  std::getline(in, text);
  char* end = nullptr;
  unsigned long long id = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || id == 0) {
    return Status::IoError(path + " does not hold a raft id: \"" + text + "\"");
  }
  return static_cast<uint64_t>(id);
}

Status ClaimRaftId(const std::string& data_dir, uint64_t id) {
  auto known = ReadRaftId(data_dir);
  if (known.ok()) {
    if (*known == id) return Status::Ok();
    return Status::InvalidArgument("this data dir belongs to raft member " +
                                   std::to_string(*known) + ", not --node-id " +
                                   std::to_string(id) + " (a member is its id: use " +
                                   std::to_string(*known) + ", or a fresh --data-dir)");
  }
  if (known.status().code() != Code::kNotFound) return known.status();
  return WriteFileAtomically(RaftIdPath(data_dir), std::to_string(id));
}

}  // namespace haven::node
