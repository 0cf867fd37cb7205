//go:build linux

package proc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"refci.dev/refci/worker/shim"
)

// Hiding paths from the pipeline is the shim's (worker/shim/hide_linux.go):
// Spec.Hide becomes its --hide arguments. Here is the worker's check,
// at start, that it can.

// CheckIsolation says whether refci (the runs' shim, as in worker.Config.Shim:
// the refci executable or refci-shim) can hide paths from pipelines here:
// it starts the namespace set-up once without a pipeline. nil means it can; the error
// says why not. Workers call it once at start to warn.
func CheckIsolation(refci string) error {
	if refci == "" || !filepath.IsAbs(refci) {
		return fmt.Errorf("the refci executable %q is not an absolute path", refci)
	}
	// The probe runs the set-up in a child of this process; /proc/self/exe
	// would be this process, which need not be refci (tests), so the
	// probe goes through a shim: refci __refci-shim --probe.
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	p, err := os.StartProcess(refci, []string{refci, ShimArg, shim.ProbeArg, "--", "-"}, &os.ProcAttr{
		Env:   []string{},
		Files: []*os.File{nil, nil, nil, w},
	})
	w.Close()
	if err != nil {
		return fmt.Errorf("starting %s: %w", refci, err)
	}
	b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	ps, err := p.Wait()
	if err != nil {
		return err
	}
	msg := strings.TrimSpace(string(b))
	if !ps.Success() || msg != "" {
		if msg == "" {
			msg = fmt.Sprintf("the probe %s %s ended %s", refci, ShimArg, ps)
		}
		return errors.New(msg)
	}
	return nil
}
