package server

import (
	"os"
	"testing"

	"refci.dev/refci/fixtures"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }
