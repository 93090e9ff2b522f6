// Fuzz target: the agent's YAML configuration file (ParseAgentConfig), and
// for a file that parses, the checks done before running. Nothing may
// crash or throw; a refusal names what was wrong.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "agent/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<constance::agent::AgentConfig> config =
      constance::agent::ParseAgentConfig(yaml, "fuzz.yaml");
  if (!config.ok()) {
    if (config.status().message().empty()) std::abort();
    return 0;
  }
  (void)constance::agent::FinishAgentConfig(*config);
  return 0;
}
