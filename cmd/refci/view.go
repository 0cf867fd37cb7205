package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"refci.dev/refci/forge/site"
	"refci.dev/refci/worker"
)

// renderPage is the worker's page hook: index.html of each result tree.
var renderPage worker.PageFunc = site.ResultPage

func cmdView(_ context.Context, e *env, args []string) int {
	fs := newFlags(e, "view")
	repoDir := fs.String("repo", ".", "the repository")
	out := fs.String("o", "", "where to write the site (default: refci-view/ in the repository's git directory)")
	var keyrings multiFlag
	fs.Var(&keyrings, "keyring", "armored public keys to trust (repeatable); default: your own key and $REFCI_HOME/trusted/*.asc")
	open := fs.Bool("open", false, "open the site's index.html in a browser (xdg-open)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	kr, err := e.keyring(keyrings, "")
	if h, _ := e.home(); errors.Is(err, errNoKeys) {
		// Not an error here: every run is then unverified, which the
		// site shows and this says once.
		fmt.Fprintf(e.stderr, "refci: no trusted keys (no %s, nothing in %s): every run is shown unverified; "+
			"get the worker's public key ('refci keys export' on the worker) and put it in %s, or pass --keyring FILE\n",
			filepath.Join(h, "key.asc"), filepath.Join(h, "trusted"), filepath.Join(h, "trusted", "worker.asc"))
	} else if err != nil {
		e.errorf("%v", err)
		return exitUsage
	}
	repo, err := openRepo(*repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(repo.GitDir(), "refci-view")
	}
	b := site.NewBuilder(repo.GitDir(), dir, kr, site.Options{Warn: func(msg string) { e.errorf("%s", msg) }})
	st, err := b.Build()
	if err != nil {
		e.errorf("view: %v", err)
		return exitInfra
	}
	index := filepath.Join(dir, "index.html")
	fmt.Fprintf(e.stdout, "refci: %d runs (%d rendered, %d removed) in %s\n%s\n", st.Runs, st.Rendered, st.Removed, st.Took.Round(time.Millisecond), index)
	if st.Runs == 0 && st.Failed == 0 {
		fmt.Fprintf(e.stderr, "refci: no runs here; fetch results with: git fetch origin '+refs/ci/*:refs/ci/*'\n")
	} else if st.Verified < st.Runs && kr.Len() > 0 {
		fmt.Fprintf(e.stderr, "refci: %d of %d runs not verified (shown grey, never the latest); their pages say why\n", st.Runs-st.Verified, st.Runs)
	}
	if *open {
		if p, err := exec.LookPath("xdg-open"); err == nil {
			cmd := exec.Command(p, index)
			if err := cmd.Start(); err != nil {
				e.errorf("xdg-open: %v; open %s yourself", err, index)
				return exitOK
			}
			go cmd.Wait()
		} else {
			fmt.Fprintf(e.stderr, "refci: no xdg-open here; open %s in a browser\n", index)
		}
	}
	return exitOK
}
