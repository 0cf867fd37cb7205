// Package lightbin finds the light helper binaries that may lie beside
// the refci executable (refci-shim, refci-job, refci-hook: small programs
// that start in a fraction of refci's time; and refci-forge, which holds
// what refci does not link: the forge adapters and the mail bridge) and
// tells whether one is of the running program's own build, so that a
// helper left by another install or version is never used. It imports
// nothing of the project: every light binary may use it.
package lightbin

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"

	"refci.dev/refci/lightbin/buildstamp"
)

// Beside returns the path of the file name in the directory of self
// (an absolute path to the running program) when that is an executable
// regular file, else "". note, when not empty, says why a file that is
// there was refused; it is empty when there is none.
func Beside(self, name string) (path, note string) {
	if self == "" || !filepath.IsAbs(self) {
		return "", ""
	}
	light := filepath.Join(filepath.Dir(self), name)
	fi, err := os.Stat(light)
	switch {
	case os.IsNotExist(err):
		return "", ""
	case err != nil:
		return "", fmt.Sprintf("%s: %v", light, err)
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Sprintf("%s is not an executable file (mode %s)", light, fi.Mode())
	}
	return light, ""
}

// OfThisBuild reports whether the executable at path was built from the
// main package pkg (an import path) of the running program's build,
// reading its build information from the file without running it. When
// not, note says why.
func OfThisBuild(path, pkg string) (ok bool, note string) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return false, fmt.Sprintf("%s: cannot read its build: %v", path, err)
	}
	if bi.Path != pkg {
		return false, fmt.Sprintf("%s is built from %q, not %s", path, bi.Path, pkg)
	}
	own, _ := debug.ReadBuildInfo()
	if got, want := buildstamp.Of(bi), buildstamp.Of(own); got != want {
		return false, fmt.Sprintf("%s is of %s, this refci of %s: it is from another build", path, got, want)
	}
	return true, ""
}
