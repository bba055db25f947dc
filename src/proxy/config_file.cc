#include "proxy/config_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <utility>

#include <yaml-cpp/yaml.h>

#include "client/watch.h"
#include "proxy/proxy_settings.h"

namespace haven::proxy {
namespace {

// Walks a parsed YAML document into ProxyOptions. Every scalar goes through the Set*Setting
// table; this class only knows the document's shape (maps, sequences, the shorthand `cluster:`).
class ConfigParser {
 public:
  // `source` names the file in messages ("proxy.yaml:12: ..."); empty gives "line 12: ...".
  explicit ConfigParser(std::string source) : source_(std::move(source)) {}

  Result<ProxyOptions> Parse(std::string_view text) {
    try {
      YAML::Node root = YAML::Load(std::string(text));
      ProxyOptions opts;
      if (Status s = ParseTop(root, &opts); !s.ok()) return s;
      if (Status s = ValidateProxyOptions(opts); !s.ok()) {
        return Status::InvalidArgument(Prefix(-1) + s.message());
      }
      return opts;
    } catch (const YAML::ParserException& e) {
      return Status::InvalidArgument(Prefix(e.mark.is_null() ? -1 : e.mark.line) +
                                     "YAML syntax error: " + e.msg);
    } catch (const YAML::Exception& e) {
      return Status::InvalidArgument(Prefix(e.mark.is_null() ? -1 : e.mark.line) + e.msg);
    } catch (const std::exception& e) {
      return Status::InvalidArgument(Prefix(-1) + "cannot parse: " + e.what());
    }
  }

 private:
  // "file:LINE: " with a 1-based line, or "file: " when the line is unknown.
  std::string Prefix(int zero_based_line) const {
    std::string where = source_;
    if (zero_based_line >= 0) {
      where += (where.empty() ? "line " : ":") + std::to_string(zero_based_line + 1);
    }
    return where.empty() ? std::string() : where + ": ";
  }

  Status ErrorAt(const YAML::Node& node, const std::string& message) const {
    return Status::InvalidArgument(Prefix(node.Mark().is_null() ? -1 : node.Mark().line) + message);
  }

  // A map's entries as (key text, key node, value node), rejecting non-scalar and repeated keys.
  struct Entry {
    std::string key;
    YAML::Node key_node;
    YAML::Node value;
  };
  Result<std::vector<Entry>> EntriesOf(const YAML::Node& map, std::string_view what) const {
    if (!map.IsMap()) return ErrorAt(map, std::string(what) + " must be a map of settings");
    std::vector<Entry> out;
    std::set<std::string> seen;
    for (const auto& kv : map) {
      if (!kv.first.IsScalar()) return ErrorAt(kv.first, "a key must be a plain name");
      std::string key = kv.first.Scalar();
      if (!seen.insert(key).second) {
        return ErrorAt(kv.first, "\"" + key + "\" is given twice in one " + std::string(what));
      }
      out.push_back({std::move(key), kv.first, kv.second});
    }
    return out;
  }

  Result<std::string> ScalarOf(const Entry& e) const {
    if (e.value.IsScalar()) return e.value.Scalar();
    if (e.value.IsNull()) return ErrorAt(e.key_node, "\"" + e.key + "\" needs a value");
    return ErrorAt(e.value, "\"" + e.key + "\" takes a single value, not a " +
                                (e.value.IsMap() ? "map" : "list"));
  }

  // Applies one scalar setting, tagging the table's message with the key's line.
  template <typename T, typename Setter>
  Status Apply(const Entry& e, T* target, Setter set) const {
    auto value = ScalarOf(e);
    if (!value.ok()) return value.status();
    if (Status s = set(target, e.key, *value); !s.ok()) return ErrorAt(e.key_node, s.message());
    return Status::Ok();
  }

  Status CheckSequence(const Entry& e, size_t max) const {
    if (!e.value.IsSequence()) return ErrorAt(e.value, "\"" + e.key + "\" must be a list");
    if (e.value.size() > max) {
      return ErrorAt(e.value, "\"" + e.key + "\" has more than " + std::to_string(max) + " items");
    }
    return Status::Ok();
  }

  Status ParseTop(const YAML::Node& root, ProxyOptions* opts) const {
    if (root.IsNull()) return ErrorAt(root, "the config is empty; expected listeners and clusters");
    auto entries = EntriesOf(root, "config");
    if (!entries.ok()) return entries.status();
    for (const Entry& e : *entries) {
      Status s;
      if (e.key == "listeners") {
        s = ParseListeners(e, opts);
      } else if (e.key == "clusters") {
        s = ParseClusters(e, opts);
      } else if (IsSetting(SettingScope::kProxy, e.key)) {
        s = Apply(e, opts, SetProxySetting);
      } else {
        s = ErrorAt(e.key_node, "unknown setting \"" + e.key + "\"; known: listeners, clusters, " +
                                    SettingNames(SettingScope::kProxy));
      }
      if (!s.ok()) return s;
    }
    return Status::Ok();
  }

  Status ParseListeners(const Entry& e, ProxyOptions* opts) const {
    if (Status s = CheckSequence(e, kMaxListeners); !s.ok()) return s;
    for (const YAML::Node& node : e.value) {
      ListenerOptions listener;
      if (Status s = ParseListener(node, &listener); !s.ok()) return s;
      opts->listeners.push_back(std::move(listener));
    }
    return Status::Ok();
  }

  Status ParseListener(const YAML::Node& node, ListenerOptions* listener) const {
    auto entries = EntriesOf(node, "listener");
    if (!entries.ok()) return entries.status();
    const Entry* shorthand = nullptr;
    const Entry* routes = nullptr;
    for (const Entry& e : *entries) {
      Status s;
      if (e.key == "routes") {
        routes = &e;
        s = ParseRoutes(e, listener);
      } else if (e.key == "cluster") {
        shorthand = &e;
        RouteOptions catch_all;
        s = Apply(e, &catch_all, SetRouteSetting);
        if (s.ok()) listener->routes.push_back(std::move(catch_all));
      } else if (IsSetting(SettingScope::kListener, e.key)) {
        s = Apply(e, listener, SetListenerSetting);
      } else {
        s = ErrorAt(e.key_node, "unknown listener setting \"" + e.key + "\"; known: routes, " +
                                    "cluster, " + SettingNames(SettingScope::kListener));
      }
      if (!s.ok()) return s;
    }
    if (shorthand != nullptr && routes != nullptr) {
      return ErrorAt(shorthand->key_node, "give a listener either routes or cluster, not both");
    }
    if (shorthand == nullptr && routes == nullptr) {
      return ErrorAt(node, "a listener needs routes or a cluster");
    }
    return Status::Ok();
  }

  Status ParseRoutes(const Entry& e, ListenerOptions* listener) const {
    if (Status s = CheckSequence(e, kMaxRoutesPerListener); !s.ok()) return s;
    for (const YAML::Node& node : e.value) {
      auto entries = EntriesOf(node, "route");
      if (!entries.ok()) return entries.status();
      RouteOptions route;
      for (const Entry& re : *entries) {
        if (!IsSetting(SettingScope::kRoute, re.key)) {
          return ErrorAt(re.key_node, "unknown route setting \"" + re.key +
                                          "\"; known: " + SettingNames(SettingScope::kRoute));
        }
        if (Status s = Apply(re, &route, SetRouteSetting); !s.ok()) return s;
      }
      listener->routes.push_back(std::move(route));
    }
    return Status::Ok();
  }

  Status ParseClusters(const Entry& e, ProxyOptions* opts) const {
    if (Status s = CheckSequence(e, kMaxClusters); !s.ok()) return s;
    for (const YAML::Node& node : e.value) {
      ClusterOptions cluster;
      if (Status s = ParseCluster(node, &cluster); !s.ok()) return s;
      opts->clusters.push_back(std::move(cluster));
    }
    return Status::Ok();
  }

  Status ParseCluster(const YAML::Node& node, ClusterOptions* cluster) const {
    auto entries = EntriesOf(node, "cluster");
    if (!entries.ok()) return entries.status();
    for (const Entry& e : *entries) {
      Status s;
      if (!IsSetting(SettingScope::kCluster, e.key)) {
        s = ErrorAt(e.key_node, "unknown cluster setting \"" + e.key +
                                    "\"; known: " + SettingNames(SettingScope::kCluster));
      } else if (e.value.IsSequence() && e.key == "upstream") {
        s = ParseUpstreamList(e, cluster);
      } else if (e.value.IsSequence() && e.key == "registry") {
        s = ParseRegistryList(e, cluster);
      } else {
        s = Apply(e, cluster, SetClusterSetting);
      }
      if (!s.ok()) return s;
    }
    return Status::Ok();
  }

  // `upstream: [a:1, b:2]`: each item is one `upstream` setting (which appends).
  Status ParseUpstreamList(const Entry& e, ClusterOptions* cluster) const {
    for (const YAML::Node& item : e.value) {
      if (!item.IsScalar()) return ErrorAt(item, "each upstream must be a HOST:PORT value");
      if (Status s = SetClusterSetting(cluster, e.key, item.Scalar()); !s.ok()) {
        return ErrorAt(item, s.message());
      }
    }
    return Status::Ok();
  }

  // `registry: [http://a:1, http://b:2]`: the same as the comma-separated value.
  Status ParseRegistryList(const Entry& e, ClusterOptions* cluster) const {
    if (Status s = CheckSequence(e, client::kMaxRegistryUrls); !s.ok()) return s;
    std::string joined;
    for (const YAML::Node& item : e.value) {
      if (!item.IsScalar()) return ErrorAt(item, "each registry must be an http://HOST:PORT value");
      joined += (joined.empty() ? "" : ",") + item.Scalar();
    }
    return Apply({e.key, e.key_node, YAML::Node(joined)}, cluster, SetClusterSetting);
  }

  std::string source_;
};

// Reads at most kMaxConfigFileBytes + 1 bytes, so that a larger file is refused without reading
// it all.
Result<std::string> ReadConfigFile(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) {
    return Status::IoError("cannot open config file " + path + ": " + std::strerror(errno));
  }
  std::string text(kMaxConfigFileBytes + 1, '\0');
  size_t n = std::fread(text.data(), 1, text.size(), file.get());
  if (std::ferror(file.get()) != 0) {
    return Status::IoError("cannot read config file " + path + ": " + std::strerror(errno));
  }
  if (n > kMaxConfigFileBytes) {
    return Status::TooLarge("config file " + path + " is larger than " +
                            std::to_string(kMaxConfigFileBytes >> 20) + " MiB");
  }
  text.resize(n);
  return text;
}

}  // namespace

Result<ProxyOptions> LoadProxyConfig(const std::string& path) {
  auto text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  return ConfigParser(path).Parse(*text);
}

Result<ProxyOptions> ParseProxyConfig(std::string_view yaml_text) {
  if (yaml_text.size() > kMaxConfigFileBytes) {
    return Status::TooLarge("config is larger than " + std::to_string(kMaxConfigFileBytes >> 20) +
                            " MiB");
  }
  return ConfigParser("").Parse(yaml_text);
}

}  // namespace haven::proxy
