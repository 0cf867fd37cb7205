// Command refci-hook is an internal helper of refci serve: the hook
// client that git receive-pack's hooks run on every push (package
// gitproto/sshd/hookclient). The refci binary can do the same (refci
// __hook ...); this one holds that and nothing else, so that it starts in
// a fraction of the time, once per updated ref and once more per push.
// refci serve uses it when it lies beside the refci executable and is of
// the same build (see sshd.ChooseHookClient).
package main

import (
	"fmt"
	"os"

	"refci.dev/refci/gitproto/sshd/hookclient"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		fmt.Fprintln(os.Stderr, "refci-hook: an internal helper of refci serve, run by git receive-pack's hooks as refci-hook HOOK [ARG...]; not for use by hand")
		os.Exit(2)
	}
	os.Exit(hookclient.Main(args, os.Getenv, os.Stdin, os.Stderr))
}
