package gitproto

import (
	"os/exec"
	"strings"
)

// ExecPath is where git keeps its own programs (`git --exec-path`), or ""
// when git cannot say (no git on PATH).
func ExecPath() string {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
