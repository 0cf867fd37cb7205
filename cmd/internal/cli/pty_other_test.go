//go:build !linux

package cli

import (
	"os"
	"testing"
)

// openPTY skips the test: opening a pseudo-terminal is written for Linux.
func openPTY(t *testing.T) *os.File {
	t.Skip("pseudo-terminals are opened on Linux only")
	return nil
}
