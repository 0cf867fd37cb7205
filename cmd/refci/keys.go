package main

import (
	"context"
	"fmt"
)

func cmdKeys(_ context.Context, e *env, args []string) int {
	fs := newFlags(e, "keys")
	keyFile := fs.String("key", "", "use this private key instead of $REFCI_HOME/key.asc")
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	if len(pos) != 1 || (pos[0] != "show" && pos[0] != "export") {
		e.errorf("keys: say 'refci keys show' (the fingerprint) or 'refci keys export' (the armored public key)")
		return exitUsage
	}
	id, err := e.identity(*keyFile)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	if pos[0] == "show" {
		fmt.Fprintf(e.stdout, "%s %s\n", id.Fingerprint(), id.UserID())
		return exitOK
	}
	pub, err := id.ArmoredPublicKey()
	if err != nil {
		e.errorf("%v", err)
		return exitInfra
	}
	e.stdout.Write(pub)
	return exitOK
}
