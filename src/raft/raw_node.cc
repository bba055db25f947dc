#include "raft/raw_node.h"

#include "raft/raft.h"

namespace haven::raft {

Result<std::unique_ptr<RawNode>> RawNode::Create(const Config& config, const InitialState& state) {
  if (Status st = Raft::ValidateConfig(config); !st.ok()) return st;
  if (Status st = Raft::ValidateState(state); !st.ok()) return st;
  return std::unique_ptr<RawNode>(new Raft(config, state));
}

const char* RoleName(Role r) {
  switch (r) {
    case Role::kFollower:
      return "follower";
    case Role::kPreCandidate:
      return "pre-candidate";
    case Role::kCandidate:
      return "candidate";
    case Role::kLeader:
      return "leader";
  }
  return "unknown";
}

}  // namespace haven::raft
