//go:build linux

package proc

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"

	"refci.dev/refci/lightbin"
	"refci.dev/refci/worker/shim"
)

// ShimName is the light shim's executable (cmd/refci-shim), looked for
// beside the refci executable.
const ShimName = "refci-shim"

// shimProbeTimeout bounds ChooseShim's run of the light shim.
const shimProbeTimeout = 10 * time.Second

// ChooseShim picks the shim for the runs of a worker whose refci
// executable is refciPath (worker.Config.RefciPath): refci-shim beside it when
// that is an executable file and answers `refci-shim __refci-shim
// --protocol` with this build's shim.Protocol, else refciPath itself,
// which runs the same shim code, only with a costlier start. A refci-shim
// from another build (left over from an older install, say) is never
// used. note, when not empty, says why a refci-shim that is there was
// refused; it is empty when there is none, or it was chosen. Workers call
// it once at start.
func ChooseShim(refciPath string) (path, note string) {
	light, note := lightbin.Beside(refciPath, ShimName)
	if light == "" {
		return refciPath, note
	}
	ctx, cancel := context.WithTimeout(context.Background(), shimProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, light, shim.Arg, shim.ProtocolArg)
	cmd.Env = []string{}
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := bytes.TrimSpace(stderr.Bytes())
		if len(msg) > 200 {
			msg = append(msg[:200:200], "..."...)
		}
		return refciPath, fmt.Sprintf("%s %s %s failed (%v; %q): it is not a refci-shim of this build", light, shim.Arg, shim.ProtocolArg, err, msg)
	}
	if got := string(bytes.TrimSuffix(stdout.Bytes(), []byte("\n"))); got != shim.Identity() {
		if len(got) > 200 {
			got = got[:200] + "..."
		}
		return refciPath, fmt.Sprintf("%s is %q, this refci %q: it is from another build", light, got, shim.Identity())
	}
	return light, ""
}
