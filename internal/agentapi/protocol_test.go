package agentapi

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// Hello's inventory keeps protocol 1's shape: an agent that predates
// awaiting_config is read as waiting for nothing, and an older control
// plane finds "running" where it was.
func TestHelloInventoryOnTheWire(t *testing.T) {
	var old Hello
	if err := json.Unmarshal([]byte(`{"agent_version":"0.9","capacity":{"vcpus":4},"running":["r1","r2"]}`), &old); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(old.Running, []string{"r1", "r2"}) || old.AwaitingConfig != nil {
		t.Errorf("an older agent's hello read as %+v", old.Inventory)
	}
	b, err := json.Marshal(Hello{AgentVersion: "1.0", Inventory: Inventory{Running: []string{"r1"}, AwaitingConfig: []string{"r1"}}})
	if err != nil {
		t.Fatal(err)
	}
	var older struct {
		Running []string `json:"running"`
	}
	if err := json.Unmarshal(b, &older); err != nil || !slices.Equal(older.Running, []string{"r1"}) ||
		!strings.Contains(string(b), `"awaiting_config":["r1"]`) {
		t.Errorf("hello on the wire: %s", b)
	}
}
