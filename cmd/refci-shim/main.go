// Command refci-shim is an internal helper of refci: the per-run shim a
// refci worker starts between itself and each pipeline, and the middle
// step that hides paths from the pipeline (package worker/shim). The refci
// binary can do the same (refci __refci-shim ...); this one holds that and
// nothing else, so that it starts in a fraction of the time, twice per
// job. A worker uses it when it lies beside the refci executable and
// speaks the same protocol (see proc.ChooseShim).
package main

import (
	"fmt"
	"os"

	"refci.dev/refci/worker/shim"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == shim.Arg {
		os.Exit(shim.Main(os.Args[2:]))
	}
	fmt.Fprintf(os.Stderr, "refci-shim: an internal helper of refci, run by the refci worker as refci-shim %s ...; not for use by hand\n", shim.Arg)
	os.Exit(2)
}
